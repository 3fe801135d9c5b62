//! A tiny authoritative DNS server on UDP loopback that answers SRV queries from a table
//! the test sets, for memcached discovery tests. Anything else gets an empty answer.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

type Table = HashMap<String, Vec<(String, u16)>>;

pub struct DnsServer {
    addr: SocketAddr,
    table: Arc<Mutex<Table>>,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    pub fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind DNS socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let table: Arc<Mutex<Table>> = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (table, queries, stop) = (table.clone(), queries.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("dns-{}", addr.port()))
                .spawn(move || {
                    let mut buf = [0u8; 512];
                    while !stop.load(Ordering::SeqCst) {
                        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                            continue;
                        };
                        queries.fetch_add(1, Ordering::SeqCst);
                        if let Some(reply) = answer(&buf[..n], &table.lock().unwrap()) {
                            let _ = socket.send_to(&reply, peer);
                        }
                    }
                })
                .unwrap()
        };
        DnsServer {
            addr,
            table,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the SRV records for `name` (no trailing dot): `(target, port)` pairs.
    pub fn set_srv(&self, name: &str, records: &[(&str, u16)]) {
        self.table.lock().unwrap().insert(
            name.trim_end_matches('.').to_ascii_lowercase(),
            records.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        );
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// Builds the reply to one query, or `None` for a packet that is not a query.
fn answer(query: &[u8], table: &Table) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question_end = i + 4;
    let name = labels.join(".");
    let records = match (qtype, table.get(&name)) {
        (33, Some(r)) => r.clone(),
        _ => Vec::new(),
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[..2]); // id
    out.extend_from_slice(&[0x84, 0x00]); // response, authoritative, no error
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..question_end)?);
    for (target, port) in records {
        out.extend_from_slice(&[0xc0, 0x0c]); // name: pointer to the question
        out.extend_from_slice(&33u16.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&5u32.to_be_bytes()); // TTL
        let mut rdata = Vec::new();
        rdata.extend_from_slice(&0u16.to_be_bytes()); // priority
        rdata.extend_from_slice(&0u16.to_be_bytes()); // weight
        rdata.extend_from_slice(&port.to_be_bytes());
        encode_name(&target, &mut rdata);
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some(out)
}
