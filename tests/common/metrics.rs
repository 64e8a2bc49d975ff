//! Reading Prometheus text from a component's `/metrics`.

use super::http::client;

/// `GET <base_url>/metrics` as text; panics naming the URL when it does not answer 2xx.
pub fn scrape(base_url: &str) -> String {
    let url = format!("{base_url}/metrics");
    let resp = client()
        .get(&url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        resp.status().is_success(),
        "{url} answered {}",
        resp.status()
    );
    resp.text().unwrap_or_else(|e| panic!("reading {url}: {e}"))
}

/// The sum of the samples of `name` whose labels include `key="value"`; 0 when none.
pub fn sum_labeled(text: &str, name: &str, key: &str, value: &str) -> f64 {
    let want = format!("{key}=\"{value}\"");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let open = line.find('{')?;
            let close = line.rfind('}')?;
            if &line[..open] != name {
                return None;
            }
            let labels = &line[open + 1..close];
            if !labels.split(',').any(|l| l.trim() == want) {
                return None;
            }
            line[close + 1..]
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0, which prints oddly
}
