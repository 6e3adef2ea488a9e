//! Keys of SPEC §1 that this build cannot carry out yet. `check` promises to reject
//! every setting that cannot work (SPEC §1, issue #11): a key that is accepted and then
//! silently does nothing is the worst kind of error, because nothing tells the
//! operator. Each refusal says what to write instead; it goes when the feature lands.
//!
//! Only values that are otherwise valid get here, so a wrong value gets one error (what
//! is wrong with it), not two.

use serde_spanned::Spanned;

use super::Ctx;
use crate::config::model::Npt6;
use crate::config::raw::RawNpt6;

impl Ctx<'_, '_> {
    /// `snat_to`: the planner's nft vocabulary (`plan::nft`) has no SNAT statement yet,
    /// so the link would masquerade to its primary address instead.
    pub(super) fn snat_to_unsupported(&mut self, v: &Spanned<String>, key: &str) {
        self.error(
            v.span(),
            key,
            "snat_to is not implemented in this build yet (it cannot NAT to a fixed \
             address); remove it, and the link masquerades to the interface's own address",
        );
    }

    /// `npt6`: no prefix translation statement in the nft vocabulary yet, and
    /// `outside = "auto"` would also need the DHCPv6-PD prefix followed.
    pub(super) fn npt6_unsupported(&mut self, v: &Spanned<RawNpt6>, npt6: &Npt6, key: &str) {
        match (&npt6.outside, &v.get_ref().outside) {
            (None, outside) => self.error(
                outside.as_ref().map_or(v.span(), |o| o.span()),
                &format!("{key}.outside"),
                "outside = \"auto\" (following the prefix DHCPv6-PD delegates to this link) \
                 is not implemented yet, and neither is npt6 with a static prefix; remove \
                 npt6 and use masquerade6 = true, or route the LAN prefix",
            ),
            (Some(_), _) => self.error(
                v.span(),
                key,
                "npt6 is not implemented in this build yet (nothing would translate the \
                 prefix); remove it and use masquerade6 = true, or route the LAN prefix",
            ),
        }
    }
}
