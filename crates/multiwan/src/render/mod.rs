//! Text renderings of a desired state (`multiwan plan`).
