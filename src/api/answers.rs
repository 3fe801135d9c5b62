//! Recently built read API repository answers, kept in the process within a byte budget.
//!
//! A repository answer is a function of the published index (its generation names its
//! chunks, which are named by their content and never rewritten with another), the image
//! records, which are keyed by digest, and the head's freshness. So an answer kept without
//! its freshness stays right for as long as the head names the same generation: a read
//! still fetches the head (one small get), compares the generation and adds the head's
//! freshness, and only builds the answer again when the index changed. A pass that changes
//! no tag publishes the same generation, so kept answers outlive it. Answers that missed
//! an image record (evicted from memcached) are not kept, so a record written again shows
//! up in the next read.
//!
//! The least recently used answers go first when the budget is full; an answer larger than
//! a quarter of the budget is never kept.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

/// What an answer depends on besides the head.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    pub scope: String,
    pub repository: String,
    /// Whether the timestamp-label decorator was applied.
    pub decorated: bool,
}

struct Answer {
    generation: u64,
    body: Bytes,
    used: u64,
}

struct Inner {
    entries: HashMap<AnswerKey, Answer>,
    bytes: usize,
    clock: u64,
}

pub struct Answers {
    budget: usize,
    inner: Mutex<Inner>,
}

impl Answers {
    /// `budget` bytes of answer bodies at most; 0 keeps none.
    pub fn new(budget: usize) -> Self {
        Answers {
            budget,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                bytes: 0,
                clock: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer built from the index `generation`, if kept.
    pub fn get(&self, key: &AnswerKey, generation: u64) -> Option<Bytes> {
        if self.budget == 0 {
            return None;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let answer = inner.entries.get_mut(key)?;
        if answer.generation != generation {
            return None;
        }
        answer.used = now;
        Some(answer.body.clone())
    }

    /// Keeps `body`, built from the index `generation`, in place of any older answer for
    /// `key`.
    pub fn put(&self, key: AnswerKey, generation: u64, body: Bytes) {
        if body.len() > self.budget / 4 {
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let used = inner.clock;
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= old.body.len();
        }
        while inner.bytes + body.len() > self.budget {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, a)| a.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let gone = inner.entries.remove(&oldest).expect("just found");
            inner.bytes -= gone.body.len();
        }
        inner.bytes += body.len();
        inner.entries.insert(
            key,
            Answer {
                generation,
                body,
                used,
            },
        );
    }

    /// Bytes of answers kept.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(r: &str) -> AnswerKey {
        AnswerKey {
            scope: "public".into(),
            repository: r.into(),
            decorated: false,
        }
    }

    #[test]
    fn an_answer_is_reused_only_for_the_same_generation() {
        let answers = Answers::new(1000);
        answers.put(key("a"), 1, Bytes::from_static(b"one"));
        assert_eq!(answers.get(&key("a"), 1).as_deref(), Some(&b"one"[..]));
        assert_eq!(answers.get(&key("a"), 2), None);
        assert_eq!(answers.get(&key("b"), 1), None);
        let decorated = AnswerKey {
            decorated: true,
            ..key("a")
        };
        assert_eq!(answers.get(&decorated, 1), None);
        answers.put(key("a"), 2, Bytes::from_static(b"two!"));
        assert_eq!(answers.bytes(), 4, "the older answer was replaced");
    }

    #[test]
    fn the_budget_evicts_the_least_recently_used_and_skips_big_answers() {
        let answers = Answers::new(400);
        for r in ["a", "b", "c", "d"] {
            answers.put(key(r), 1, Bytes::from(vec![b'x'; 100]));
        }
        // "a" read last: "b" is now the least recently used.
        assert!(answers.get(&key("a"), 1).is_some());
        answers.put(key("e"), 1, Bytes::from(vec![b'x'; 100]));
        assert_eq!(answers.bytes(), 400);
        assert!(answers.get(&key("b"), 1).is_none());
        for r in ["a", "c", "d", "e"] {
            assert!(answers.get(&key(r), 1).is_some(), "{r}");
        }
        answers.put(key("big"), 1, Bytes::from(vec![b'x'; 101]));
        assert!(answers.get(&key("big"), 1).is_none(), "over a quarter");

        let none = Answers::new(0);
        none.put(key("a"), 1, Bytes::new());
        assert!(none.get(&key("a"), 1).is_none());
    }
}
