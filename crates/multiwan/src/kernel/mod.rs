//! The only code that touches the kernel: reads interface facts and installed state,
//! applies a desired state.
