//! The list request as a URL: its filters ([`ListQuery`]) and their encoding, shared by the client and by the check
//! of the settings that the longest request stays within what proxies accept. Depends on nothing else here.

use url::Url;

/// The endpoint this client reads.
pub const INSIGHTS_PATH: &str = "/v3/enterprise/sessions/insights";

/// Filters and cursor of one list request. Array filters go out as repeated keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub first: u32,
    pub after: Option<String>,
    pub updated_after: Option<i64>,
    pub updated_before: Option<i64>,
    pub created_after: Option<i64>,
    pub created_before: Option<i64>,
    pub session_ids: Vec<String>,
}

/// The list request for `q` against the API at `base_url`, as the client sends it.
pub fn list_url(base_url: &Url, q: &ListQuery) -> Url {
    with_query(&join_path(base_url, INSIGHTS_PATH), q)
}

pub(super) fn join_path(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    url.set_path(&format!("{prefix}{path}"));
    url
}

pub(super) fn with_query(endpoint: &Url, q: &ListQuery) -> Url {
    let mut url = endpoint.clone();
    {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("first", &q.first.to_string());
        if let Some(after) = &q.after {
            pairs.append_pair("after", after);
        }
        for (key, value) in [
            ("updated_after", q.updated_after),
            ("updated_before", q.updated_before),
            ("created_after", q.created_after),
            ("created_before", q.created_before),
        ] {
            if let Some(v) = value {
                pairs.append_pair(key, &v.to_string());
            }
        }
        for id in &q.session_ids {
            pairs.append_pair("session_ids", id);
        }
    }
    url
}
