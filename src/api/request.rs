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

/// The longest request URL we send: nginx's default request-line buffer (and many proxies' limit) is 8 KB.
pub const MAX_REQUEST_URL_BYTES: usize = 8 * 1024;
/// Worst-case lengths assumed for an enrichment request: ids are `devin-` and 32 hex digits today.
const MAX_SESSION_ID_CHARS: usize = 64;
const MAX_CURSOR_CHARS: usize = 128;

/// Length of the longest enrichment request URL for `batch` ids, encoded as the API client encodes them.
fn enrichment_url_len(base_url: &Url, batch: usize) -> usize {
    let worst = ListQuery {
        first: 200,
        after: Some("c".repeat(MAX_CURSOR_CHARS)),
        session_ids: vec!["f".repeat(MAX_SESSION_ID_CHARS); batch],
        ..Default::default()
    };
    list_url(base_url, &worst).as_str().len()
}

/// An enrichment request carries its ids in the query: a batch whose URL proxies refuse could never succeed.
/// What is wrong with `sync.enrichment_batch` = `batch` against `base_url`, if anything (`app::init` refuses it).
pub fn enrichment_batch_problem(base_url: &Url, batch: usize) -> Option<String> {
    let len = enrichment_url_len(base_url, batch);
    if len <= MAX_REQUEST_URL_BYTES {
        return None;
    }
    let fixed = enrichment_url_len(base_url, 0);
    let per_id = enrichment_url_len(base_url, 1) - fixed;
    let fits = MAX_REQUEST_URL_BYTES.saturating_sub(fixed) / per_id;
    Some(format!(
        "{batch} session ids make request URLs of up to {len} bytes (ids of up to {MAX_SESSION_ID_CHARS} characters), \
         more than the {MAX_REQUEST_URL_BYTES} that proxies commonly accept; use at most {fits} with this api.base_url"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enrichment_batch_whose_url_exceeds_8_kb_is_refused_with_the_batch_that_fits() {
        let base = Url::parse("https://api.devin.ai").unwrap();
        let problem = enrichment_batch_problem(&base, 200).expect("200 ids are too many");
        assert!(problem.starts_with("200 session ids"), "{problem}");
        assert!(problem.contains("8192"), "{problem}");
        let fits: usize =
            problem.rsplit("use at most ").next().unwrap().split_whitespace().next().unwrap().parse().unwrap();
        // devin- + 32 hex = 38 characters per id today; 64 are allowed for: about 100 ids fit in 8 KB.
        assert!((80..=110).contains(&fits), "{problem}");
        assert!(enrichment_url_len(&base, fits) <= MAX_REQUEST_URL_BYTES);
        assert!(enrichment_url_len(&base, fits + 1) > MAX_REQUEST_URL_BYTES);
        assert_eq!(enrichment_batch_problem(&base, fits), None);
        let problem = enrichment_batch_problem(&base, fits + 1).expect("one more does not fit");
        assert!(problem.ends_with(&format!("use at most {fits} with this api.base_url")), "{problem}");
        // A long base URL (a proxy's path prefix) leaves room for fewer ids.
        let long = Url::parse(&format!("https://proxy.example.com/{}", "p".repeat(2000))).unwrap();
        assert!(enrichment_batch_problem(&long, 90).is_some_and(|p| p.starts_with("90 ")));
        // The default (50) fits.
        assert_eq!(enrichment_batch_problem(&base, 50), None);
    }
}
