//! The verdict on one traced run: its leak figures after suppressions, and how they compare
//! with its budget.
//!
//! Invariants: [`judge`] is pure (a report in, a [`Judgement`] out); still-reachable memory is
//! never suppressed and only gated with `--fail-on reachable`; lost stacks are compared by
//! their key ([`stack_key`]), never by address.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Budget, StackBudget, Suppression, stack_key};
use crate::{
    classify::Category,
    report::{Amount, Stack},
    tracer::Heap,
};

/// What counts toward the gate besides lost memory (definitely and indirectly lost), which
/// always does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailOn {
    /// Still-reachable memory over its budget.
    pub reachable: bool,
    /// The heap's peak over its budget and the tolerance.
    pub peak: bool,
    /// More allocations than the budget and the tolerance.
    pub allocations: bool,
    /// How far a peak or an allocation count may exceed its budget and pass, in percent.
    pub tolerance_percent: u32,
}

/// The least room a non-zero tolerance leaves above a peak budget: libtest's own threads move
/// a test's peak by some KB from run to run (which of their blocks are live at once).
pub const PEAK_SLACK: u64 = 64 << 10;
/// The same for an allocation budget.
pub const ALLOCATIONS_SLACK: u64 = 64;

impl FailOn {
    /// The most a peak budget lets through with the tolerance.
    pub fn allowed_peak(self, budget: u64) -> u64 {
        self.allowed(budget, PEAK_SLACK)
    }

    /// The most an allocation budget lets through with the tolerance.
    pub fn allowed_allocations(self, budget: u64) -> u64 {
        self.allowed(budget, ALLOCATIONS_SLACK)
    }

    /// `budget` and the tolerance's share of it, or `slack` if that is more; exactly `budget`
    /// with a tolerance of 0%.
    fn allowed(self, budget: u64, slack: u64) -> u64 {
        if self.tolerance_percent == 0 {
            return budget;
        }
        let share = budget.saturating_mul(u64::from(self.tolerance_percent)) / 100;
        budget.saturating_add(share.max(slack))
    }
}

/// A run's leak figures after suppressions, and how they compare with the budget.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Judgement {
    /// Definitely plus indirectly lost, suppressions applied.
    pub lost: Amount,
    pub reachable: Amount,
    /// Lost memory that matched a suppression.
    pub suppressed: Amount,
    /// The heap's peak and allocation count, when they were measured.
    #[serde(skip)]
    pub heap: Option<Heap>,
    /// Lost stacks by key, suppressions applied, largest first.
    pub stacks: Vec<KeyedStack>,
    /// Why the run is over budget; empty when within.
    pub over_budget: Vec<OverBudget>,
    /// The patterns of the suppressions that matched a lost stack (the first that matched
    /// each), for listing the unused ones.
    #[serde(skip)]
    pub used_suppressions: std::collections::BTreeSet<String>,
}

/// One way a run is over its budget. Serialized tagged by `kind`; `Display` is the sentence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
#[non_exhaustive]
pub enum OverBudget {
    /// Lost more than the budget's `lost`.
    #[serde(rename = "lost_over_budget")]
    Lost { lost: Amount, budget: Amount },
    /// `--fail-on reachable`: more still reachable than the budget's `reachable`.
    #[serde(rename = "reachable_over_budget")]
    Reachable { reachable: Amount, budget: Amount },
    /// A stack the budget lists lost more than its own budget.
    #[serde(rename = "stack_over_budget")]
    Stack {
        frames: Vec<String>,
        lost: Amount,
        budget: Amount,
    },
    /// A stack lost memory and the budget, which lists stacks, does not list it.
    #[serde(rename = "unlisted_stack")]
    UnlistedStack { frames: Vec<String>, lost: Amount },
    /// `--fail-on peak`: the heap's peak over the budget's `peak` and the tolerance.
    #[serde(rename = "peak_over_budget")]
    Peak {
        peak: u64,
        budget: u64,
        allowed: u64,
    },
    /// `--fail-on allocations`: more allocations than the budget's and the tolerance.
    #[serde(rename = "allocations_over_budget")]
    Allocations {
        allocations: u64,
        budget: u64,
        allowed: u64,
    },
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let over = |f: &mut std::fmt::Formatter<'_>, have: &Amount, allowed: &Amount| {
            write!(
                f,
                " {} bytes in {} blocks, over its budget of {} bytes in {} blocks",
                have.bytes, have.blocks, allowed.bytes, allowed.blocks
            )
        };
        match self {
            OverBudget::Lost { lost, budget } => {
                f.write_str("lost")?;
                over(f, lost, budget)
            }
            OverBudget::Reachable { reachable, budget } => {
                f.write_str("still reachable")?;
                over(f, reachable, budget)
            }
            OverBudget::Stack {
                frames,
                lost,
                budget,
            } => {
                write!(f, "stack {}: lost", frames.join(" <- "))?;
                over(f, lost, budget)
            }
            OverBudget::UnlistedStack { frames, lost } => write!(
                f,
                "lost {} bytes in {} blocks from a stack the baseline does not list: {}",
                lost.bytes,
                lost.blocks,
                frames.join(" <- ")
            ),
            OverBudget::Peak {
                peak,
                budget,
                allowed,
            } => write!(
                f,
                "peak heap {peak} bytes, over its budget of {budget} bytes ({allowed} with the \
                 tolerance)"
            ),
            OverBudget::Allocations {
                allocations,
                budget,
                allowed,
            } => write!(
                f,
                "{allocations} allocations, over its budget of {budget} ({allowed} with the \
                 tolerance)"
            ),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyedStack {
    pub frames: Vec<String>,
    pub bytes: u64,
    pub blocks: u64,
}

/// Compares the stacks of a report (built with every stack, reachable ones included) with
/// `budget`.
pub fn judge(
    stacks: &[Stack],
    heap: Option<Heap>,
    budget: Option<&Budget>,
    suppressions: &[Suppression],
    fail_on: FailOn,
) -> Judgement {
    let mut judgement = Judgement {
        heap,
        ..Judgement::default()
    };
    let mut by_key: BTreeMap<Vec<String>, Amount> = BTreeMap::new();
    for stack in stacks {
        let amount = Amount {
            bytes: stack.bytes,
            blocks: stack.allocations,
        };
        match stack.category {
            Some(Category::StillReachable) => add(&mut judgement.reachable, amount),
            // A report at exit classifies every stack; one that is not is counted as lost.
            Some(Category::DefinitelyLost | Category::IndirectlyLost) | None => {
                if let Some(used) = suppressions.iter().find(|s| s.matches(&stack.frames)) {
                    judgement.used_suppressions.insert(used.pattern.clone());
                    add(&mut judgement.suppressed, amount);
                } else {
                    add(&mut judgement.lost, amount);
                    add(by_key.entry(stack_key(&stack.frames)).or_default(), amount);
                }
            }
        }
    }
    judgement.stacks = by_key
        .into_iter()
        .map(|(frames, amount)| KeyedStack {
            frames,
            bytes: amount.bytes,
            blocks: amount.blocks,
        })
        .collect();
    judgement
        .stacks
        .sort_by_key(|stack| std::cmp::Reverse((stack.bytes, stack.blocks)));

    let zero = Budget::default();
    let budget = budget.unwrap_or(&zero);
    let over =
        |have: Amount, allowed: Amount| have.bytes > allowed.bytes || have.blocks > allowed.blocks;
    if over(judgement.lost, budget.lost) {
        judgement.over_budget.push(OverBudget::Lost {
            lost: judgement.lost,
            budget: budget.lost,
        });
    }
    let reachable_budget = budget.reachable.unwrap_or_default();
    if fail_on.reachable && over(judgement.reachable, reachable_budget) {
        judgement.over_budget.push(OverBudget::Reachable {
            reachable: judgement.reachable,
            budget: reachable_budget,
        });
    }
    // A test without a budget for them may allocate nothing: absent is zero, as for leaks.
    if let Some(heap) = heap {
        let peak_budget = budget.peak.unwrap_or(0);
        if fail_on.peak && heap.peak_bytes > fail_on.allowed_peak(peak_budget) {
            judgement.over_budget.push(OverBudget::Peak {
                peak: heap.peak_bytes,
                budget: peak_budget,
                allowed: fail_on.allowed_peak(peak_budget),
            });
        }
        let allocations_budget = budget.allocations.unwrap_or(0);
        if fail_on.allocations && heap.allocations > fail_on.allowed_allocations(allocations_budget)
        {
            judgement.over_budget.push(OverBudget::Allocations {
                allocations: heap.allocations,
                budget: allocations_budget,
                allowed: fail_on.allowed_allocations(allocations_budget),
            });
        }
    }
    if !budget.stacks.is_empty() {
        for stack in &judgement.stacks {
            let allowed = budget
                .stacks
                .iter()
                .find(|allowed| allowed.frames == stack.frames);
            let have = Amount {
                bytes: stack.bytes,
                blocks: stack.blocks,
            };
            match allowed {
                None => judgement.over_budget.push(OverBudget::UnlistedStack {
                    frames: stack.frames.clone(),
                    lost: have,
                }),
                Some(allowed) => {
                    let allowed = Amount {
                        bytes: allowed.bytes,
                        blocks: allowed.blocks,
                    };
                    if over(have, allowed) {
                        judgement.over_budget.push(OverBudget::Stack {
                            frames: stack.frames.clone(),
                            lost: have,
                            budget: allowed,
                        });
                    }
                }
            }
        }
    }
    judgement
}

fn add(total: &mut Amount, amount: Amount) {
    total.bytes += amount.bytes;
    total.blocks += amount.blocks;
}

impl Judgement {
    /// The budget that makes this run pass exactly (its children's budgets are set apart).
    pub fn as_budget(&self, fail_on: FailOn) -> Budget {
        Budget {
            children: BTreeMap::new(),
            lost: self.lost,
            reachable: fail_on.reachable.then_some(self.reachable),
            peak: self
                .heap
                .filter(|_| fail_on.peak)
                .map(|heap| heap.peak_bytes),
            allocations: self
                .heap
                .filter(|_| fail_on.allocations)
                .map(|heap| heap.allocations),
            stacks: self
                .stacks
                .iter()
                .map(|stack| StackBudget {
                    frames: stack.frames.clone(),
                    bytes: stack.bytes,
                    blocks: stack.blocks,
                })
                .collect(),
        }
    }

    /// Whether blessing should record a budget at all (absent means zero).
    pub fn needs_budget(&self, fail_on: FailOn) -> bool {
        self.lost.blocks > 0
            || (fail_on.reachable && self.reachable.blocks > 0)
            || (self.heap.is_some() && (fail_on.peak || fail_on.allocations))
    }
}

/// The lost, unsuppressed stacks of a report, for showing under a failed test.
pub fn lost_stacks<'a>(
    stacks: &'a [Stack],
    suppressions: &'a [Suppression],
) -> impl Iterator<Item = &'a Stack> {
    stacks.iter().filter(|stack| {
        stack.category != Some(Category::StillReachable)
            && !suppressions.iter().any(|s| s.matches(&stack.frames))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_and_allocation_budgets_have_a_tolerance_and_absent_is_zero() {
        let fail_on = FailOn {
            peak: true,
            allocations: true,
            tolerance_percent: 10,
            ..FailOn::default()
        };
        // 10%, or the slack when that is more; 0%: nothing more.
        assert_eq!(fail_on.allowed_peak(1 << 20), (1 << 20) + (1 << 20) / 10);
        assert_eq!(fail_on.allowed_peak(1000), 1000 + PEAK_SLACK);
        assert_eq!(fail_on.allowed_allocations(5000), 5500);
        assert_eq!(fail_on.allowed_allocations(50), 50 + ALLOCATIONS_SLACK);
        assert_eq!(fail_on.allowed_peak(u64::MAX), u64::MAX);
        let exact = FailOn {
            tolerance_percent: 0,
            ..fail_on
        };
        assert_eq!(exact.allowed_peak(1000), 1000);
        let budget = Budget {
            peak: Some(1 << 20),
            allocations: Some(5000),
            ..Budget::default()
        };
        let heap = |peak_bytes, allocations| {
            Some(Heap {
                peak_bytes,
                allocations,
                ..Heap::default()
            })
        };
        let over = |heap, budget, fail_on| judge(&[], heap, budget, &[], fail_on).over_budget;
        let peak_allowed = (1 << 20) + (1 << 20) / 10;
        assert!(over(heap(peak_allowed, 5500), Some(&budget), fail_on).is_empty());
        assert_eq!(
            over(heap(peak_allowed + 1, 5501), Some(&budget), fail_on),
            [
                OverBudget::Peak {
                    peak: peak_allowed + 1,
                    budget: 1 << 20,
                    allowed: peak_allowed
                },
                OverBudget::Allocations {
                    allocations: 5501,
                    budget: 5000,
                    allowed: 5500
                }
            ]
        );
        // Not gated: never over; gated without a budget: over past the slack.
        assert!(over(heap(5 << 20, 50_000), Some(&budget), FailOn::default()).is_empty());
        assert!(over(heap(PEAK_SLACK, 0), None, fail_on).is_empty());
        assert_eq!(over(heap(PEAK_SLACK + 1, 0), None, fail_on).len(), 1);
        // Unmeasured (no heap figures): nothing to judge.
        assert!(over(None, Some(&budget), fail_on).is_empty());
        // Blessing writes what was measured, and only what is gated.
        let judgement = judge(&[], heap(2048, 7), None, &[], fail_on);
        let blessed = judgement.as_budget(FailOn {
            allocations: false,
            ..fail_on
        });
        assert_eq!((blessed.peak, blessed.allocations), (Some(2048), None));
    }
}
