//! Growing members' volumes: a StatefulSet's claim templates cannot change, so when the spec
//! asks for more storage the operator asks each member's claim for it instead, and Kubernetes
//! expands the volume where its storage class allows.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{Names, VOLUME};

/// The bytes a storage quantity names (`1Gi`, `500M`, `1.5Ti`, `2e9`); `None` for anything
/// else. Precise enough to compare sizes.
pub fn bytes(quantity: &Quantity) -> Option<f64> {
    /// Binary suffixes first: `Ei` must not be read as `E` after a number ending in `i`.
    const SUFFIXES: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let text = quantity.0.trim();
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| text.strip_suffix(suffix).map(|number| (number, *factor)))
        .unwrap_or((text, 1.0));
    // Digits, a point and a decimal exponent (`2e9`) only: no signs, no `inf`.
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'e') {
        return None;
    }
    number.parse::<f64>().ok().filter(|n| n.is_finite()).map(|n| n * factor)
}

/// The size of the claims `stateful_set` was made with.
pub fn template_size(stateful_set: &StatefulSet) -> Option<&Quantity> {
    let templates = stateful_set.spec.as_ref()?.volume_claim_templates.as_ref()?;
    let claim = templates.iter().find(|c| c.metadata.name.as_deref() == Some(VOLUME))?;
    claim.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage")
}

/// The size a claim asks for.
pub fn claim_size(claim: &PersistentVolumeClaim) -> Option<&Quantity> {
    claim.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage")
}

/// Whether `wanted` is more than `current` (an unreadable size is never grown).
pub fn grows(current: &Quantity, wanted: &Quantity) -> bool {
    matches!((bytes(current), bytes(wanted)), (Some(current), Some(wanted)) if wanted > current)
}

/// The claim of the member in pod `ordinal`.
pub fn claim_name(names: &Names, ordinal: u64) -> String {
    format!("{VOLUME}-{}-{ordinal}", names.stateful_set())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        Quantity(text.to_string())
    }

    #[test]
    fn sizes_read_as_kubernetes_writes_them() {
        assert_eq!(bytes(&q("1Gi")), Some(1024f64.powi(3)));
        assert_eq!(bytes(&q("1.5Ki")), Some(1536.0));
        assert_eq!(bytes(&q("500M")), Some(5e8));
        assert_eq!(bytes(&q("2e9")), Some(2e9));
        assert_eq!(bytes(&q("123")), Some(123.0));
        assert_eq!(bytes(&q("1Gb")), None);
        assert_eq!(bytes(&q("1Ei")), Some(1024f64.powi(6)));
        assert_eq!(bytes(&q("2E")), Some(2e18));
        assert_eq!(bytes(&q("5e")), None);
        assert_eq!(bytes(&q("Gi")), None);
        assert_eq!(bytes(&q("100m")), None, "millibytes are no volume size");
        assert_eq!(bytes(&q("-1Gi")), None);
        assert!(grows(&q("1Gi"), &q("5Gi")) && grows(&q("1G"), &q("1Gi")));
        assert!(
            !grows(&q("5Gi"), &q("5120Mi")) && !grows(&q("5Gi"), &q("1Gi")) && !grows(&q("x"), &q("5Gi"))
        );
    }
}
