//! The mirror side: leased runs of fresh pieces, source mode, the mirror's help with the tail
//! once every piece is in the pool, and asks to the scheduler.

use super::task::{State, Transfer};
use super::{Action, MirrorWhy, Mode, Node, Notice, TaskId};
use crate::mix;
use std::time::Duration;

impl Node {
    /// The scheduler's answer: leased pieces to fetch, or that every piece is in the pool (or
    /// leased).
    pub(super) fn fresh(
        &mut self,
        id: TaskId,
        pieces: Vec<u32>,
        all_released: bool,
        move_on: bool,
    ) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.asking = false;
        task.mirror_dirty = true;
        task.all_released |= all_released;
        task.move_on |= move_on || all_released;
        for piece in pieces {
            if piece < task.pieces() && task.leased.insert(piece) {
                task.leases.push_back(piece);
            }
        }
    }

    pub(super) fn decide_mirror(&mut self, id: TaskId, now: Duration, out: &mut Vec<Action>) {
        let (source_parallel, assist_parallel) =
            (self.cfg.source_parallel, self.cfg.assist_parallel);
        let (seed, released) = (self.seed, self.released);
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let help_due = task.assist_waiting && now >= task.assist_at;
        if !task.wants()
            || now < task.mirror_retry_at
            || !(std::mem::take(&mut task.mirror_dirty) || help_due)
        {
            return;
        }
        // Leased pieces first: the pool waits on them. Consecutive ones go in one range.
        let mut runs: Vec<(u32, u32)> = Vec::new();
        while let Some(piece) = task.leases.pop_front() {
            match task.state[piece as usize] {
                State::Missing => match runs.last_mut() {
                    Some((_, end)) if *end == piece => *end += 1,
                    _ => runs.push((piece, piece + 1)),
                },
                State::Have => {
                    if task.leased.remove(&piece) {
                        task.completed.push(piece);
                    }
                }
                // Already coming from a peer: it completes the lease when it lands.
                State::Incoming(_) | State::Mirror | State::Assist => {}
            }
        }
        let leased = runs.len();
        let p2p = task.mode == Mode::P2p;
        let busy = task.mirror_transfers() + runs.len() as u32;
        let taken = |runs: &[(u32, u32)], p: u32| runs.iter().any(|&(a, b)| (a..b).contains(&p));
        match task.mode {
            Mode::Source => {
                let mut room = source_parallel.saturating_sub(busy);
                let mut p = 0;
                while room > 0 && p < task.pieces() {
                    if task.state[p as usize] == State::Missing && !taken(&runs, p) {
                        runs.push((p, p + 1));
                        room -= 1;
                    }
                    p += 1;
                }
            }
            // A peer just overtook a help range: peers are sending this tail, wait a piece's
            // time before asking the mirror again (each range given up costs the mirror's
            // uplink what it had already sent).
            Mode::P2p if task.all_released && released && now < task.assist_at => {
                task.assist_waiting = true;
            }
            Mode::P2p if task.all_released && released => {
                task.assist_waiting = false;
                // Each member takes its share: together the pool keeps no more help ranges on
                // the mirror's uplink than leases (`MAX_IN_FLIGHT`; the members known here, at
                // most the join's 40, stand for the pool).
                let share = crate::release::MAX_IN_FLIGHT / (task.members.len() as u32 + 1);
                let cap = share.clamp(1, assist_parallel.max(1));
                let room = cap.min(task.assist_window).saturating_sub(busy) as usize;
                if room > 0 {
                    // The rarest missing pieces nobody is sending here.
                    let mut best: Vec<(u32, u64, u32)> = (0..task.pieces())
                        .filter(|&p| task.state[p as usize] == State::Missing && !taken(&runs, p))
                        .map(|p| (task.counts[p as usize], mix(seed, u64::from(p)), p))
                        .collect();
                    best.sort_unstable();
                    runs.extend(best.iter().take(room).map(|k| (k.2, k.2 + 1)));
                }
            }
            Mode::P2p => {}
        }
        // Ranges past the leased ones help the tail (p2p mode) or are source mode's.
        for (k, (first, end)) in runs.into_iter().enumerate() {
            let why = match (k < leased, p2p) {
                (true, _) => MirrorWhy::Lease,
                (false, true) => MirrorWhy::Assist,
                (false, false) => MirrorWhy::Source,
            };
            self.fetch(id, first, end, why, now, out);
        }
    }

    /// Starts a mirror range. An `assist` range (every piece is already in the pool) is not
    /// announced: peers keep offering its piece, and the first offer takes over from it.
    pub(super) fn fetch(
        &mut self,
        id: TaskId,
        first: u32,
        end: u32,
        why: MirrorWhy,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        let assist = why == MirrorWhy::Assist;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        for piece in first..end {
            task.transfers.insert(piece, Transfer::new(now));
            if assist {
                task.state[piece as usize] = State::Assist;
                continue;
            }
            task.state[piece as usize] = State::Mirror;
            out.push(Action::Notify {
                task: id,
                piece,
                notice: Notice::Receiving,
            });
        }
        task.runs.push((first, end));
        out.push(Action::FetchMirror {
            task: id,
            first,
            count: end - first,
            why,
        });
    }

    pub(super) fn decide_ask(&mut self, id: TaskId, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let wait = task.wants() && task.mode == Mode::P2p && !task.all_released;
        if (wait && !task.asking) || !task.completed.is_empty() {
            task.asking |= wait;
            out.push(Action::AskFresh {
                task: id,
                completed: std::mem::take(&mut task.completed),
                wait,
            });
        }
    }

    /// No piece for `stall` in p2p mode and nothing coming from the mirror: one piece from
    /// the mirror, so a pool whose holders all went quiet still moves.
    pub(super) fn rescue(&mut self, id: TaskId, now: Duration, out: &mut Vec<Action>) {
        let stall = self.cfg.stall;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if !task.rescuable() || now.saturating_sub(task.last_progress) < stall {
            return;
        }
        task.last_progress = now;
        let piece = (0..task.pieces()).find(|&p| task.state[p as usize] == State::Missing);
        if let Some(piece) = piece {
            self.fetch(id, piece, piece + 1, MirrorWhy::Rescue, now, out);
        }
    }
}
