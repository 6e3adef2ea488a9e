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
    /// `npt6.outside = "auto"` needs the prefix a DHCPv6-PD client delegated to this
    /// link, followed when it changes; nothing reads it yet. A static outside prefix
    /// is installed (`snat ip6 prefix to`).
    pub(super) fn npt6_unsupported(&mut self, v: &Spanned<RawNpt6>, npt6: &Npt6, key: &str) {
        if npt6.outside.is_none() {
            let outside = &v.get_ref().outside;
            self.error(
                outside.as_ref().map_or(v.span(), |o| o.span()),
                &format!("{key}.outside"),
                "outside = \"auto\" (following the prefix DHCPv6-PD delegates to this link) \
                 is not implemented yet; give the routed prefix the ISP assigned to this \
                 link, e.g. outside = \"2001:db8:1:100::/64\", or use masquerade6 = true",
            );
        }
    }
}
