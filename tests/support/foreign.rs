//! Another origin that records everything it receives: the target of cross-origin `Link`s,
//! redirects and token realms in the credential-leak tests. It answers every request with
//! 401 and a Bearer challenge naming its own `/token` realm, which issues a token to
//! anyone: a client that trusted it would hand it the registry's credentials.

use super::server::{BackgroundServer, bind_loopback};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use std::sync::{Arc, Mutex};

/// One request as it arrived: request line, every header and the body, as text.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path_and_query: String,
    /// The `Authorization` header's value, if any.
    pub authorization: Option<String>,
    /// Request line, headers and body, for searching for a canary.
    pub raw: String,
}

/// See the module docs. Stops on drop.
pub struct ForeignHost {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    _server: BackgroundServer,
}

impl ForeignHost {
    pub fn start() -> ForeignHost {
        let (listener, port) = bind_loopback("foreign host");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let server = BackgroundServer::builder("foreign-host").start(listener, move |req| {
            let log = log.clone();
            async move { answer(req, port, &log).await }
        });
        ForeignHost {
            port,
            received,
            _server: server,
        }
    }
    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    port: u16,
    log: &Mutex<Vec<Received>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let mut raw = format!("{} {path_and_query}\n", parts.method);
    for (name, value) in &parts.headers {
        raw.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    raw.push_str(&String::from_utf8_lossy(&body));
    log.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        path_and_query: path_and_query.clone(),
        authorization: parts
            .headers
            .get("authorization")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        raw,
    });
    let resp = if path_and_query.starts_with("/token") {
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"token":"foreign-token","expires_in":300}"#,
            )))
    } else {
        Response::builder()
            .status(401)
            .header(
                "www-authenticate",
                format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="foreign""#),
            )
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            )))
    };
    Ok(resp.unwrap())
}
