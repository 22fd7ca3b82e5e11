//! An error with its classification attached, for the store's and the run's errors (`store::StoreError`,
//! `sync::RunError`): it shows and chains exactly as the error it wraps, and its kind is for decisions (retry,
//! run status), not for messages.

/// A classification of errors.
pub trait ErrorKind: Copy + std::fmt::Debug + Send + Sync + 'static {
    /// How `error` is classified (a kind attached in its chain, else what its causes say).
    fn of(error: &anyhow::Error) -> Self;
}

/// `error`, classified as `kind`.
#[derive(Debug)]
pub struct Classified<K> {
    kind: K,
    error: anyhow::Error,
}

impl<K: ErrorKind> Classified<K> {
    /// `error`, classified as `kind` rather than as [`ErrorKind::of`] would.
    pub fn new(kind: K, error: anyhow::Error) -> Classified<K> {
        Classified { kind, error }
    }

    pub fn kind(&self) -> K {
        self.kind
    }

    /// The error as it was, without the classification.
    pub fn into_inner(self) -> anyhow::Error {
        self.error
    }

    /// The kind attached to the outermost `Classified<K>` in `error`'s chain, if any.
    pub fn attached(error: &anyhow::Error) -> Option<K> {
        error.chain().find_map(|cause| cause.downcast_ref::<Classified<K>>()).map(|c| c.kind)
    }
}

impl<K: ErrorKind> From<anyhow::Error> for Classified<K> {
    fn from(error: anyhow::Error) -> Classified<K> {
        Classified { kind: K::of(&error), error }
    }
}

impl<K> std::fmt::Display for Classified<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl<K: std::fmt::Debug> std::error::Error for Classified<K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}
