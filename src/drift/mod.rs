//! Schema drift: what the API sends that the models do not know. Each decoded item is compared with the models
//! ([`detect`]); what differs is tallied per source ([`DriftTally`]) and written to `schema_drift` at the end of
//! each run and every few seconds during long ones (`Store::record_drift`), where the first sighting is logged
//! and counted.

mod detect;
mod tally;

pub use detect::inspect;
pub use tally::{DriftTally, Pending};

/// One difference between an item and the models.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Drift {
    /// JSON path inside the item, arrays as `[]`: `analysis.issues[].severity`.
    pub path: String,
    pub kind: DriftKind,
    /// unknown_field: the JSON type; unknown_enum_value: the value; type_changed: `string (expected number)`.
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriftKind {
    UnknownField,
    UnknownEnumValue,
    TypeChanged,
}

impl DriftKind {
    pub const ALL: [DriftKind; 3] = [DriftKind::UnknownField, DriftKind::UnknownEnumValue, DriftKind::TypeChanged];

    /// The name in `schema_drift.kind` and the metrics' `kind` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            DriftKind::UnknownField => "unknown_field",
            DriftKind::UnknownEnumValue => "unknown_enum_value",
            DriftKind::TypeChanged => "type_changed",
        }
    }
}
