//! Who gets a new lead: the reps of the territory its country belongs to, or all reps, in
//! turn. The turn is a counter per group of reps, read and written in the capturing call's
//! transaction, so two leads captured at once never go to the same turn.

use keel_sdk::Error;
use keel_sdk::storage::Collection;

use crate::settings::{self, AssignmentMode};

const TURNS: Collection<u64> = Collection::new("assignment-turns");

/// The owner the assignment rules give a lead from `country`, if they give one.
pub fn owner_for(country: Option<&str>) -> Result<Option<i64>, Error> {
    let rules = settings::assignment()?;
    let (group, reps) = match rules.mode {
        AssignmentMode::None => return Ok(None),
        AssignmentMode::RoundRobin => ("*".to_owned(), rules.reps),
        AssignmentMode::Territory => {
            let country = country.map(str::to_ascii_uppercase);
            let territory = rules.territories.into_iter().find(|t| {
                country
                    .as_ref()
                    .is_some_and(|country| t.countries.contains(country))
            });
            match territory {
                Some(territory) => (format!("territory:{}", territory.name), territory.reps),
                None => ("*".to_owned(), rules.reps),
            }
        }
    };
    if reps.is_empty() {
        return Ok(None);
    }
    let turn = TURNS.get_for_update(&group)?.unwrap_or(0);
    TURNS.put(&group, &(turn + 1))?;
    let index = usize::try_from(turn % reps.len() as u64).unwrap_or(0);
    Ok(Some(reps[index]))
}
