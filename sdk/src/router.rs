//! A small router for `handle-http`: method and path patterns such as `/claims/{id}`, with
//! handlers that return `Result<Response, Error>` (errors become problem responses).

use std::collections::HashMap;

use crate::{Error, Request, Response};

/// The `{name}` segments a pattern captured.
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// The captured segment, or a 404 naming it.
    pub fn get(&self, name: &str) -> Result<&str, Error> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Error::NotFound(format!("no {name} in the path")))
    }
}

type Handler<'a> = Box<dyn Fn(&Request, &Params) -> Result<Response, Error> + 'a>;

/// Routes requests to handlers by method and path.
#[derive(Default)]
pub struct Router<'a> {
    routes: Vec<(&'static str, Vec<&'static str>, Handler<'a>)>,
}

impl std::fmt::Debug for Router<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.routes
                    .iter()
                    .map(|(method, path, _)| (method, path.join("/"))),
            )
            .finish()
    }
}

impl<'a> Router<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn route(
        mut self,
        method: &'static str,
        pattern: &'static str,
        handler: impl Fn(&Request, &Params) -> Result<Response, Error> + 'a,
    ) -> Self {
        let segments = pattern.trim_matches('/').split('/').collect();
        self.routes.push((method, segments, Box::new(handler)));
        self
    }

    pub fn get(
        self,
        pattern: &'static str,
        handler: impl Fn(&Request, &Params) -> Result<Response, Error> + 'a,
    ) -> Self {
        self.route("GET", pattern, handler)
    }

    pub fn post(
        self,
        pattern: &'static str,
        handler: impl Fn(&Request, &Params) -> Result<Response, Error> + 'a,
    ) -> Self {
        self.route("POST", pattern, handler)
    }

    pub fn put(
        self,
        pattern: &'static str,
        handler: impl Fn(&Request, &Params) -> Result<Response, Error> + 'a,
    ) -> Self {
        self.route("PUT", pattern, handler)
    }

    pub fn delete(
        self,
        pattern: &'static str,
        handler: impl Fn(&Request, &Params) -> Result<Response, Error> + 'a,
    ) -> Self {
        self.route("DELETE", pattern, handler)
    }

    /// Answers the request: 404 for an unknown path, 405 for a known path with another method.
    pub fn handle(&self, request: Request) -> Response {
        let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
        let mut path_matched = false;
        for (method, pattern, handler) in &self.routes {
            let Some(params) = matches(pattern, &segments) else {
                continue;
            };
            path_matched = true;
            if *method == request.method {
                return handler(&request, &params).unwrap_or_else(|error| Response::error(&error));
            }
        }
        if path_matched {
            Response::problem(
                405,
                &format!("{} is not allowed on {}", request.method, request.path),
            )
        } else {
            Response::problem(
                404,
                &format!("no route for {} {}", request.method, request.path),
            )
        }
    }
}

fn matches(pattern: &[&str], segments: &[&str]) -> Option<Params> {
    if pattern.len() != segments.len() {
        return None;
    }
    let mut params = HashMap::new();
    for (expected, actual) in pattern.iter().zip(segments) {
        match expected.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) if !actual.is_empty() => {
                params.insert(name.to_owned(), (*actual).to_owned());
            }
            Some(_) => return None,
            None if expected == actual => {}
            None => return None,
        }
    }
    Some(Params(params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str) -> Request {
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    #[test]
    fn routes_by_method_and_pattern() {
        let router = Router::new()
            .get("/claims", |_, _| Ok(Response::json(200, "list")))
            .get("/claims/{id}", |_, params| {
                Ok(Response::json(200, params.get("id")?))
            })
            .post("/claims/{id}/approve", |_, _| {
                Err(Error::Denied("no".into()))
            });
        assert_eq!(router.handle(request("GET", "/claims")).status, 200);
        let one = router.handle(request("GET", "/claims/7"));
        assert_eq!(one.body, b"\"7\"");
        assert_eq!(
            router.handle(request("POST", "/claims/7/approve")).status,
            403
        );
        assert_eq!(router.handle(request("DELETE", "/claims/7")).status, 405);
        assert_eq!(router.handle(request("GET", "/nothing")).status, 404);
    }
}
