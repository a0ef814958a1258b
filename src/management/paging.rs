//! RabbitMQ's listing parameters: `name` (with `use_regex`) and paging
//! with `page` / `page_size`, `sort` / `sort_reverse`, and `columns`.

use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ApiError, ApiResult};

/// Query parameters of the listings.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    page: Option<usize>,
    page_size: Option<usize>,
    name: Option<String>,
    use_regex: Option<String>,
    columns: Option<String>,
    sort: Option<String>,
    sort_reverse: Option<String>,
}

/// Applies `name` / `use_regex`, `sort`, `columns` and paging to a listing
/// as RabbitMQ does: with `page`, the reply is an object with `items` and
/// the counts; without, the array itself.
pub(super) fn listing(items: Vec<Value>, q: &ListQuery) -> ApiResult<Json<Value>> {
    let total = items.len();
    let regex = q.use_regex.as_deref() == Some("true");
    // As RabbitMQ: `name` filters a paged listing only; matching ignores case.
    let name = q.name.as_ref().filter(|_| q.page.is_some());
    let filter = match (name, regex) {
        (Some(name), true) if !name.is_empty() => {
            let re = regex::RegexBuilder::new(name)
                .case_insensitive(true)
                .build()
                .map_err(|e| ApiError::bad_request(format!("invalid regex: {e}")))?;
            Some(Box::new(move |n: &str| re.is_match(n)) as Box<dyn Fn(&str) -> bool>)
        }
        (Some(name), false) if !name.is_empty() => {
            let needle = name.to_lowercase();
            Some(Box::new(move |n: &str| n.to_lowercase().contains(&needle)) as Box<dyn Fn(&str) -> bool>)
        }
        _ => None,
    };
    let mut items: Vec<Value> = match &filter {
        Some(f) => items.into_iter().filter(|i| f(i["name"].as_str().unwrap_or_default())).collect(),
        None => items,
    };
    if let Some(key) = &q.sort {
        let path: Vec<&str> = key.split('.').collect();
        let at = |v: &Value| path.iter().fold(v.clone(), |v, k| v.get(k).cloned().unwrap_or(Value::Null));
        items.sort_by(|a, b| compare(&at(a), &at(b)));
        if q.sort_reverse.as_deref() == Some("true") {
            items.reverse();
        }
    }
    if let Some(columns) = &q.columns {
        let wanted: Vec<Vec<&str>> = columns.split(',').map(|c| c.trim().split('.').collect()).collect();
        items = items.into_iter().map(|item| pick(&item, &wanted)).collect();
    }
    let Some(page) = q.page else { return Ok(Json(Value::Array(items))) };
    let page_size = q.page_size.unwrap_or(100);
    if !(1..=500).contains(&page_size) {
        return Err(ApiError::bad_request(format!("page_size must be between 1 and 500, got {page_size}")));
    }
    let filtered = items.len();
    let page_count = filtered.div_ceil(page_size).max(1);
    if page == 0 || page > page_count {
        return Err(ApiError::bad_request(format!("page out of range: {page} of {page_count}")));
    }
    let chunk: Vec<Value> = items.into_iter().skip((page - 1) * page_size).take(page_size).collect();
    Ok(Json(json!({
        "filtered_count": filtered,
        "item_count": chunk.len(),
        "items": chunk,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    })))
}

fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Only the given (dotted) columns of an object, nested as they were.
fn pick(item: &Value, columns: &[Vec<&str>]) -> Value {
    let mut out = Map::new();
    for path in columns {
        let mut source = item;
        let mut target = &mut out;
        for (i, key) in path.iter().enumerate() {
            let Some(next) = source.get(*key) else { break };
            if i + 1 == path.len() {
                target.insert(key.to_string(), next.clone());
            } else {
                source = next;
                let entry = target.entry(key.to_string()).or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(map) = entry else { break };
                target = map;
            }
        }
    }
    Value::Object(out)
}
