//! Property test: random operation sequences with reopens at random points,
//! checked after every step against a simple in-memory model of the log.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::*;
use flotilla_storage::{Batch, Entry, HardState, SnapshotMarker, Wal, WalError};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    /// Append `n` entries to `group` starting `back` entries before last + 1.
    Append {
        group: u64,
        back: u64,
        n: u64,
        term: u64,
        len: usize,
    },
    HardState {
        group: u64,
        term: u64,
    },
    /// Compact to `frac`/8 of the way from first to last.
    Compact {
        group: u64,
        frac: u64,
    },
    /// Install a snapshot `ahead` entries past the last index.
    Snapshot {
        group: u64,
        ahead: u64,
        term: u64,
    },
    /// Set the group's metadata to `len` bytes derived from `tag`.
    Meta {
        group: u64,
        tag: u64,
        len: usize,
    },
    Remove {
        group: u64,
    },
    Rewrite {
        group: u64,
    },
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1u64..5, 0u64..4, 1u64..6, 1u64..5, 0usize..3000)
            .prop_map(|(group, back, n, term, len)| Step::Append { group, back, n, term, len }),
        2 => (1u64..5, 1u64..9).prop_map(|(group, term)| Step::HardState { group, term }),
        2 => (1u64..5, 0u64..9).prop_map(|(group, frac)| Step::Compact { group, frac }),
        1 => (1u64..5, 0u64..3, 1u64..9).prop_map(|(group, ahead, term)| Step::Snapshot { group, ahead, term }),
        1 => (1u64..5, 0u64..1000, 0usize..2000).prop_map(|(group, tag, len)| Step::Meta { group, tag, len }),
        1 => (1u64..5).prop_map(|group| Step::Remove { group }),
        1 => (1u64..5).prop_map(|group| Step::Rewrite { group }),
        1 => Just(Step::Reopen),
    ]
}

#[derive(Debug, Default, Clone)]
struct Model {
    hs: Option<HardState>,
    meta: Option<Bytes>,
    marker: SnapshotMarker,
    entries: Vec<Entry>, // marker.index + 1 ..
}

impl Model {
    fn last(&self) -> u64 {
        self.marker.index + self.entries.len() as u64
    }
    fn term(&self, i: u64) -> Option<u64> {
        if i == self.marker.index {
            return Some(self.marker.term);
        }
        i.checked_sub(self.marker.index + 1)
            .and_then(|k| self.entries.get(k as usize))
            .map(|e| e.term)
    }
    fn snapshot(&mut self, m: SnapshotMarker) {
        if m == self.marker {
            return;
        }
        if m.index <= self.last() && self.term(m.index) == Some(m.term) {
            let k = (m.index - self.marker.index) as usize;
            self.entries.drain(..k);
        } else {
            self.entries.clear();
        }
        self.marker = m;
    }
}

async fn check(wal: &Wal, model: &BTreeMap<u64, Model>, ctx: &str) {
    assert_eq!(wal.groups(), model.keys().copied().collect::<Vec<_>>());
    for (&g, m) in model {
        assert_eq!(wal.hard_state(g), m.hs, "{ctx}: group {g} hard state");
        assert_eq!(wal.meta(g), m.meta, "{ctx}: group {g} meta");
        assert_eq!(wal.snapshot(g), Some(m.marker), "{ctx}: group {g} marker");
        assert_eq!(wal.first_index(g), Some(m.marker.index + 1));
        assert_eq!(wal.last_index(g), Some(m.last()), "{ctx}: group {g} last");
        if !m.entries.is_empty() {
            let got = wal
                .entries(g, m.marker.index + 1..m.last() + 1, u64::MAX)
                .await
                .unwrap();
            assert_eq!(got, m.entries, "{ctx}: group {g} entries");
        }
    }
}

async fn run_steps(dir: std::path::PathBuf, steps: Vec<Step>) {
    let opts = small_opts();
    let (mut wal, _) = Wal::open(&dir, opts.clone()).await.unwrap();
    let mut model: BTreeMap<u64, Model> = BTreeMap::new();
    for (k, s) in steps.into_iter().enumerate() {
        let ctx = format!("step {k} {s:?}");
        match s {
            Step::Append {
                group,
                back,
                n,
                term,
                len,
            } => {
                let m = model.get(&group).cloned().unwrap_or_default();
                let first = (m.last() + 1).saturating_sub(back).max(m.marker.index + 1);
                let es: Vec<Entry> = (first..first + n)
                    .map(|i| entry(group, i, term, len))
                    .collect();
                let mut b = Batch::new();
                b.append(group, es.clone());
                wal.write(b).await.unwrap();
                let m = model.entry(group).or_default();
                m.entries.truncate((first - m.marker.index - 1) as usize);
                m.entries.extend(es);
            }
            Step::HardState { group, term } => {
                let hs = HardState {
                    term,
                    vote: group,
                    commit: term * 2,
                };
                let mut b = Batch::new();
                b.set_hard_state(group, hs);
                wal.write(b).await.unwrap();
                model.entry(group).or_default().hs = Some(hs);
            }
            Step::Compact { group, frac } => {
                let Some(m) = model.get_mut(&group) else {
                    assert!(matches!(
                        wal.compact(group, 1).await,
                        Err(WalError::GroupNotFound { .. })
                    ));
                    continue;
                };
                let index = m.marker.index + (m.last() - m.marker.index) * frac / 8;
                wal.compact(group, index).await.unwrap();
                if index > m.marker.index {
                    let t = m.term(index).unwrap();
                    m.snapshot(SnapshotMarker { index, term: t });
                }
            }
            Step::Snapshot { group, ahead, term } => {
                let last = model.get(&group).map_or(0, |m| m.last());
                let mk = SnapshotMarker {
                    index: last + ahead,
                    term,
                };
                if mk.index == 0 {
                    continue;
                }
                let mut b = Batch::new();
                b.set_snapshot(group, mk);
                wal.write(b).await.unwrap();
                model.entry(group).or_default().snapshot(mk);
            }
            Step::Meta { group, tag, len } => {
                let meta = payload(group, tag, 0, len);
                let mut b = Batch::new();
                b.set_meta(group, meta.clone());
                wal.write(b).await.unwrap();
                model.entry(group).or_default().meta = Some(meta);
            }
            Step::Remove { group } => {
                wal.remove_group(group).await.unwrap();
                model.remove(&group);
            }
            Step::Rewrite { group } => {
                wal.rewrite_groups(&[group], 1 << 20).await.unwrap();
            }
            Step::Reopen => {
                wal.close().await.unwrap();
                let (w, rec) = Wal::open(&dir, opts.clone()).await.unwrap();
                wal = w;
                assert_eq!(rec.groups.len(), model.len());
                for (r, (&g, m)) in rec.groups.iter().zip(&model) {
                    assert_eq!((r.group, &r.meta), (g, &m.meta), "{ctx}: recovered meta");
                }
            }
        }
        check(&wal, &model, &ctx).await;
    }
    // Let reclamation run, then a final reopen.
    for _ in 0..5 {
        wal.write(Batch::new()).await.unwrap();
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    wal.close().await.unwrap();
    let (wal, _) = Wal::open(&dir, opts).await.unwrap();
    check(&wal, &model, "final reopen").await;
    wal.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_operations_with_reopens_match_the_model(steps in proptest::collection::vec(step(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || run_steps(path, steps));
    }
}
