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
};

/// What counts toward the gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailOn {
    /// Lost memory (definitely and indirectly lost).
    #[default]
    Lost,
    /// Lost memory, and still-reachable memory over its budget too.
    Reachable,
}

/// A run's leak figures after suppressions, and how they compare with the budget.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Judgement {
    /// Definitely plus indirectly lost, suppressions applied.
    pub lost: Amount,
    pub reachable: Amount,
    /// Lost memory that matched a suppression.
    pub suppressed: Amount,
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
    budget: Option<&Budget>,
    suppressions: &[Suppression],
    fail_on: FailOn,
) -> Judgement {
    let mut judgement = Judgement::default();
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
    if fail_on == FailOn::Reachable && over(judgement.reachable, reachable_budget) {
        judgement.over_budget.push(OverBudget::Reachable {
            reachable: judgement.reachable,
            budget: reachable_budget,
        });
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
            reachable: (fail_on == FailOn::Reachable).then_some(self.reachable),
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
        self.lost.blocks > 0 || (fail_on == FailOn::Reachable && self.reachable.blocks > 0)
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
