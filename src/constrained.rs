//! Exact export under hard limits: a multiple-choice knapsack with several costs. Its own module:
//! it touches no tensor and no architecture parameter, only numbers (the choices'
//! log-probabilities and costs), and depends on nothing else of the crate.
//!
//! Each group (one architecture label) takes exactly one of its items (candidates); item `i` of
//! group `g` has a value `v[g][i]` (the log of its probability, so that sums are log-products)
//! and a cost vector `c[g][i][k]`, one entry per cost (latency, parameters, FLOPs, ...). The
//! solver returns the choice of highest total value whose summed costs are at most `limit[k]`
//! for every `k`: the most probable architecture under the limits.
//!
//! The k best choices (`solve_top`): the same search keeping the k best leaves found, pruning
//! against the k-th; an item is dropped beforehand only when k others of its group dominate it
//! (each of those, put in its place, gives a choice at least as good that fits).
//!
//! Exact depth-first branch and bound. Before the search, items that another item of their group
//! dominates (it ranks before them: a higher value, or an equal one and a lower index; and it costs
//! no more in any dimension; for the k best, k others) are dropped, and groups are ordered by the
//! spread of their values. At a node that fixed the first `d` groups with value `V` and
//! costs `C`, the subtree is pruned when no completion fits (`C_k + sum of the remaining groups'
//! least cost k > limit_k` for some `k`) or when an admissible upper bound on its best value is
//! no better than the incumbent. The bound is the least of LP relaxations of surrogate problems,
//! each replacing the limits by one weighted sum `w . C <= w . limit` (`w >= 0`):
//!
//! - one per limited cost `k` (`w` its unit vector: that cost alone);
//! - with several limits, one along Lagrange multipliers fitted once at the root (coordinate-wise
//!   convex line searches on the dual `sum_g max_i (v - l.c) + l.limit`): at the root its bound
//!   approaches the LP relaxation of all limits together (equals it at the optimal multipliers),
//!   and below the root it adapts to the capacity left.
//!
//! Items are tried in decreasing order of `v - l.c`, the value less its priced costs, so that
//! good feasible incumbents come early.
//!
//! Each single-constraint LP is solved from each group's upper concave hull in the (surrogate
//! cost, value) plane; the hull segments of all groups from a depth on are sorted by slope and
//! prefix-summed once, so a node's bound is a binary search per direction: O(K log S) for S
//! segments. A surrogate whose least costs exceed its capacity proves the node infeasible.
//!
//! Every surrogate relaxes the constraints (any choice within the limits is within the weighted
//! sum), so each bound is at least the subtree's true best and the result is exact. The problem
//! is NP-hard (weakly for one cost, strongly for several): the worst case is exponential in the
//! number of groups, O(prod n_g) nodes; the bounds make random 30-group, 10-candidate instances
//! take milliseconds (`benchmarks/constrained_export.py`).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Relative slack on limits, for rounding in sums of costs taken in different orders.
pub const LIMIT_RTOL: f64 = 1e-9;

/// One problem. `values[g][i]`: item `i` of group `g`; `costs[g][i][k]`; `limits[k]` (may be `inf`).
#[derive(Debug, Clone)]
pub struct Problem {
    pub values: Vec<Vec<f64>>,
    pub costs: Vec<Vec<Vec<f64>>>,
    pub limits: Vec<f64>,
}

/// The best choice (an item index per group, in the problem's order), its value, nodes visited.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    pub choice: Vec<usize>,
    pub value: f64,
    pub nodes: u64,
}

/// One of the k best choices: an item index per group (the problem's order) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub choice: Vec<usize>,
    pub value: f64,
}

/// `limit` plus the slack [`LIMIT_RTOL`] allows.
pub fn slack_limit(limit: f64) -> f64 {
    limit + LIMIT_RTOL * limit.abs().max(1.0)
}

impl Problem {
    /// Checks shapes and numbers; returns the number of costs.
    pub fn validate(&self) -> Result<usize, String> {
        let k = self.limits.len();
        if self.values.len() != self.costs.len() {
            return Err(format!("{} groups of values but {} of costs", self.values.len(), self.costs.len()));
        }
        for (limit_index, limit) in self.limits.iter().enumerate() {
            if limit.is_nan() || *limit == f64::NEG_INFINITY {
                return Err(format!("limit {limit_index} is {limit}; limits are numbers or +inf (no limit)"));
            }
        }
        for (g, (values, costs)) in self.values.iter().zip(&self.costs).enumerate() {
            if values.is_empty() {
                return Err(format!("group {g} has no candidates"));
            }
            if values.len() != costs.len() {
                return Err(format!("group {g} has {} values but {} cost vectors", values.len(), costs.len()));
            }
            for (i, (v, c)) in values.iter().zip(costs).enumerate() {
                if v.is_nan() || *v == f64::INFINITY {
                    return Err(format!("group {g}, candidate {i}: value {v}; values are log-probabilities"));
                }
                if c.len() != k {
                    return Err(format!("group {g}, candidate {i}: {} costs for {k} limits", c.len()));
                }
                if let Some(bad) = c.iter().find(|x| !x.is_finite()) {
                    return Err(format!("group {g}, candidate {i}: cost {bad}; costs must be finite"));
                }
            }
        }
        Ok(k)
    }

    /// The least achievable total of each cost on its own (each may need a different choice).
    pub fn least_costs(&self) -> Vec<f64> {
        (0..self.limits.len())
            .map(|k| self.costs.iter().map(|group| group.iter().map(|c| c[k]).fold(f64::INFINITY, f64::min)).sum())
            .collect()
    }
}

/// One group after preprocessing: items sorted by decreasing value, with their original indices.
struct Group {
    index: usize,
    items: Vec<usize>,
    values: Vec<f64>,
    costs: Vec<Vec<f64>>,
}

/// Prefix sums of the LP relaxation of one cost over the groups from a depth on.
struct LpSuffix {
    base_cost: f64,
    base_value: f64,
    /// Cumulative (cost, value) after each segment, sorted by decreasing slope, starting at (0, 0).
    cum_cost: Vec<f64>,
    cum_value: Vec<f64>,
    slopes: Vec<f64>,
}

impl LpSuffix {
    /// Over the surrogate cost `weights . c` (a unit vector: one cost alone).
    fn new(groups: &[Group], weights: &[f64]) -> Self {
        let (mut base_cost, mut base_value) = (0.0, 0.0);
        let mut segments: Vec<(f64, f64)> = Vec::new();
        for group in groups {
            let surrogate = group.costs.iter().map(|c| dot(c, weights));
            let hull = upper_hull(surrogate.zip(group.values.iter().copied()).collect());
            base_cost += hull[0].0;
            base_value += hull[0].1;
            segments.extend(hull.windows(2).map(|w| (w[1].0 - w[0].0, w[1].1 - w[0].1)));
        }
        segments.sort_by(|a, b| (b.1 / b.0).total_cmp(&(a.1 / a.0)));
        let (mut cum_cost, mut cum_value) = (vec![0.0], vec![0.0]);
        for (dc, dv) in &segments {
            cum_cost.push(cum_cost.last().unwrap() + dc);
            cum_value.push(cum_value.last().unwrap() + dv);
        }
        let slopes = segments.iter().map(|(dc, dv)| dv / dc).collect();
        LpSuffix { base_cost, base_value, cum_cost, cum_value, slopes }
    }

    /// The LP bound with `capacity` left for this cost; `-inf` when not even the least costs fit.
    fn bound(&self, capacity: f64) -> f64 {
        let spare = capacity - self.base_cost;
        if spare < -1e-9 * (1.0 + capacity.abs().max(self.base_cost.abs())) {
            return f64::NEG_INFINITY;
        }
        // The last prefix that fits entirely, then the fitting fraction of the next segment.
        let j = self.cum_cost.partition_point(|&c| c <= spare).saturating_sub(1);
        let mut bound = self.base_value + self.cum_value[j];
        if j < self.slopes.len() {
            bound += (spare - self.cum_cost[j]).max(0.0) * self.slopes[j];
        }
        bound
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).filter(|(_, w)| **w != 0.0).map(|(x, w)| x * w).sum()
}

/// The upper concave hull of `(cost, value)` points from the least cost (best value there) up to
/// the best value: the points an LP relaxation may mix. Strictly increasing in both coordinates.
fn upper_hull(mut points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut hull: Vec<(f64, f64)> = Vec::new();
    for p in points {
        if let Some(last) = hull.last() {
            if p.1 <= last.1 {
                continue; // costs no less for no more value
            }
            if p.0 <= last.0 {
                continue; // same cost, lower value (sorted so), already skipped above
            }
        }
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            // b lies on or below the chord a-p: drop it.
            if (b.1 - a.1) * (p.0 - a.0) <= (p.1 - a.1) * (b.0 - a.0) {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    hull
}

/// A finite stand-in for `-inf` values (zero probability) that ranks every choice containing one
/// below every choice without: lower than `n_groups * lowest - (n_groups - 1) * highest`.
fn finite_floor(values: &[Vec<f64>]) -> f64 {
    let finite: Vec<f64> = values.iter().flatten().copied().filter(|v| v.is_finite()).collect();
    let lo = finite.iter().copied().fold(0.0, f64::min);
    let hi = finite.iter().copied().fold(0.0, f64::max);
    let n = values.len() as f64;
    n * lo - n * hi - 1.0
}

/// Drops the items that `keep` others dominate (they cannot be among the `keep` best choices)
/// and sorts the rest by decreasing value.
///
/// Item `i` dominates item `j` when it fits wherever `j` fits (no higher cost in any dimension) and
/// ranks before it: a higher value, or an equal value and a lower index (the ranking's tie order).
/// A cheaper item of equal value but a higher index does not: the choice with `j` ranks before the
/// one with it, so dropping `j` would make the answer depend on `k` and on the table.
fn prepare_group(index: usize, values: &[f64], costs: &[Vec<f64>], keep: usize) -> Group {
    let n = values.len();
    let dominated = |j: usize| {
        (0..n)
            .filter(|&i| {
                i != j
                    && (values[i] > values[j] || (values[i] == values[j] && i < j))
                    && costs[i].iter().zip(&costs[j]).all(|(a, b)| a <= b)
            })
            .count()
            >= keep
    };
    let mut items: Vec<usize> = (0..n).filter(|&j| !dominated(j)).collect();
    items.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    Group {
        index,
        values: items.iter().map(|&i| values[i]).collect(),
        costs: items.iter().map(|&i| costs[i].clone()).collect(),
        items,
    }
}

/// `sum_g max_i (v - l.c)`: the Lagrangian relaxation's group term.
fn lagrangian_terms(groups: &[Group], multipliers: &[f64]) -> f64 {
    groups
        .iter()
        .map(|g| {
            g.values
                .iter()
                .zip(&g.costs)
                .map(|(v, c)| v - c.iter().zip(multipliers).map(|(x, l)| x * l).sum::<f64>())
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .sum()
}

/// Multipliers `l >= 0` that make `sum_g max_i (v - l.c) + l.limits` small (any `l` gives a valid
/// bound; a smaller one prunes more): coordinate-wise ternary searches on the convex dual.
fn fit_multipliers(groups: &[Group], limits: &[f64]) -> Vec<f64> {
    let mut l: Vec<f64> = vec![0.0; limits.len()];
    let dual = |l: &[f64]| {
        lagrangian_terms(groups, l)
            + l.iter().zip(limits).map(|(a, b)| if *a == 0.0 { 0.0 } else { a * b }).sum::<f64>()
    };
    for _round in 0..8 {
        for k in 0..limits.len() {
            if !limits[k].is_finite() {
                continue;
            }
            let at = |t: f64, l: &mut Vec<f64>| {
                let old = l[k];
                l[k] = t;
                let value = dual(l);
                l[k] = old;
                value
            };
            // Bracket the minimum: double the upper end while the dual still decreases.
            let mut hi = l[k].max(1e-6);
            while hi < 1e12 && at(2.0 * hi, &mut l) < at(hi, &mut l) {
                hi *= 2.0;
            }
            let (mut a, mut b) = (0.0, 2.0 * hi);
            for _ in 0..60 {
                let (m1, m2) = (a + (b - a) / 3.0, b - (b - a) / 3.0);
                if at(m1, &mut l) <= at(m2, &mut l) {
                    b = m2;
                } else {
                    a = m1;
                }
            }
            let t = 0.5 * (a + b);
            if at(t, &mut l) < dual(&l) {
                l[k] = t;
            }
        }
    }
    l
}

struct Search<'a> {
    groups: &'a [Group],
    limits: Vec<f64>,
    /// `least[d][k]`: sum over groups from depth `d` on of their least cost `k`.
    least: Vec<Vec<f64>>,
    /// Surrogate directions (one per limited cost, and the fitted multipliers' when they mix
    /// several), each with the LP relaxation of the groups from each depth on.
    surrogates: Vec<(Vec<f64>, Vec<LpSuffix>)>,
    /// `best_rest[d]`: the sum of the best values of the groups from depth `d` on (the bound
    /// without limits).
    best_rest: Vec<f64>,
    /// How many choices to keep.
    keep: usize,
    /// The best leaves so far, best first: (value, the choice in the problem's group order).
    found: Vec<(f64, Vec<usize>)>,
    path: Vec<usize>,
    nodes: u64,
}

impl Search<'_> {
    /// The least of the surrogate LP bounds: each relaxes the limits into one, so each is admissible.
    fn bound(&self, depth: usize, value: f64, costs: &[f64]) -> f64 {
        let mut bound = value + self.best_rest[depth];
        for (weights, suffixes) in &self.surrogates {
            let capacity: f64 =
                (0..costs.len()).filter(|&k| weights[k] != 0.0).map(|k| weights[k] * (self.limits[k] - costs[k])).sum();
            bound = bound.min(value + suffixes[depth].bound(capacity));
        }
        bound
    }

    /// The value a subtree must be able to reach to be searched: the k-th best so far, less what
    /// rounding could explain; `-inf` until k leaves are found.
    fn threshold(&self) -> f64 {
        match self.found.get(self.keep - 1) {
            Some((kth, _)) => kth - 1e-9 * (1.0 + kth.abs()),
            None => f64::NEG_INFINITY,
        }
    }

    /// Keeps a leaf among the k best: by decreasing value, ties by the choice in lexicographic
    /// order (in the problem's group order), so the ranking does not depend on the search's.
    fn record(&mut self, value: f64) {
        let mut choice = vec![0; self.groups.len()];
        for (group, slot) in self.groups.iter().zip(&self.path) {
            choice[group.index] = group.items[*slot];
        }
        let at = self.found.partition_point(|(v, c)| *v > value || (*v == value && *c < choice));
        if at < self.keep {
            self.found.insert(at, (value, choice));
            self.found.truncate(self.keep);
        }
    }

    fn visit(&mut self, depth: usize, value: f64, costs: &mut Vec<f64>) {
        self.nodes += 1;
        if depth == self.groups.len() {
            self.record(value);
            return;
        }
        let group = &self.groups[depth];
        for (slot, (v, c)) in group.values.iter().zip(&group.costs).enumerate() {
            let fits = (0..costs.len()).all(|k| costs[k] + c[k] + self.least[depth + 1][k] <= self.limits[k]);
            if !fits {
                continue;
            }
            for k in 0..costs.len() {
                costs[k] += c[k];
            }
            let child = value + v;
            let bound = self.bound(depth + 1, child, costs);
            // Prune only when the bound is below the k-th best by more than rounding could explain.
            if bound > f64::NEG_INFINITY && (self.found.len() < self.keep || bound > self.threshold()) {
                self.path.push(slot);
                self.visit(depth + 1, child, costs);
                self.path.pop();
            }
            for k in 0..costs.len() {
                costs[k] -= c[k];
            }
        }
    }
}

/// Solves `problem` exactly; `None` when no choice meets every limit.
pub fn solve(problem: &Problem) -> Result<Option<Solution>, String> {
    let (mut ranked, nodes) = solve_top(problem, 1)?;
    Ok(ranked.pop().map(|best| Solution { choice: best.choice, value: best.value, nodes }))
}

/// The `keep` best choices within the limits, best first (fewer when fewer fit; ties in the
/// lexicographic order of the choices), and the number of search nodes visited.
pub fn solve_top(problem: &Problem, keep: usize) -> Result<(Vec<Ranked>, u64), String> {
    if keep == 0 {
        return Err("k must be at least 1".to_string());
    }
    let n_costs = problem.validate()?;
    let floor = finite_floor(&problem.values);
    let values: Vec<Vec<f64>> =
        problem.values.iter().map(|g| g.iter().map(|&v| if v.is_finite() { v } else { floor }).collect()).collect();
    let limits: Vec<f64> = problem.limits.iter().map(|&l| slack_limit(l)).collect();
    let mut groups: Vec<Group> =
        values.iter().zip(&problem.costs).enumerate().map(|(g, (v, c))| prepare_group(g, v, c, keep)).collect();
    // Decisive groups first: the widest spread of values.
    let spread = |g: &Group| g.values[0] - g.values[g.values.len() - 1];
    groups.sort_by(|a, b| spread(b).total_cmp(&spread(a)).then(a.index.cmp(&b.index)));

    let depth_count = groups.len();
    let mut least = vec![vec![0.0; n_costs]; depth_count + 1];
    for d in (0..depth_count).rev() {
        for k in 0..n_costs {
            let min = groups[d].costs.iter().map(|c| c[k]).fold(f64::INFINITY, f64::min);
            least[d][k] = least[d + 1][k] + min;
        }
    }
    if (0..n_costs).any(|k| least[0][k] > limits[k]) {
        return Ok((Vec::new(), 0));
    }
    let mut best_rest = vec![0.0; depth_count + 1];
    for d in (0..depth_count).rev() {
        best_rest[d] = best_rest[d + 1] + groups[d].values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    }
    let multipliers = fit_multipliers(&groups, &limits);
    // Items most promising under the multipliers first: good incumbents early.
    for group in &mut groups {
        let reduced: Vec<f64> = group.values.iter().zip(&group.costs).map(|(v, c)| v - dot(c, &multipliers)).collect();
        let mut order: Vec<usize> = (0..reduced.len()).collect();
        order.sort_by(|&a, &b| reduced[b].total_cmp(&reduced[a]).then(a.cmp(&b)));
        group.items = order.iter().map(|&i| group.items[i]).collect();
        group.values = order.iter().map(|&i| group.values[i]).collect();
        group.costs = order.iter().map(|&i| group.costs[i].clone()).collect();
    }
    let mut directions: Vec<Vec<f64>> = (0..n_costs)
        .filter(|&k| limits[k].is_finite())
        .map(|k| (0..n_costs).map(|j| if j == k { 1.0 } else { 0.0 }).collect())
        .collect();
    if multipliers.iter().filter(|&&l| l > 0.0).count() > 1 {
        directions.push(multipliers.clone());
    }
    let surrogates = directions
        .into_iter()
        .map(|w| {
            let suffixes = (0..=depth_count).map(|d| LpSuffix::new(&groups[d..], &w)).collect();
            (w, suffixes)
        })
        .collect();
    let mut search = Search {
        groups: &groups,
        limits,
        least,
        surrogates,
        best_rest,
        keep,
        found: Vec::with_capacity(keep.min(1024) + 1),
        path: Vec::with_capacity(depth_count),
        nodes: 0,
    };
    search.visit(0, 0.0, &mut vec![0.0; n_costs]);
    // The values as the problem gives them (a zero probability's -inf, not its finite stand-in).
    let ranked = search
        .found
        .into_iter()
        .map(|(_, choice)| {
            let value = choice.iter().enumerate().map(|(g, &i)| problem.values[g][i]).sum();
            Ranked { choice, value }
        })
        .collect();
    Ok((ranked, search.nodes))
}

/// `(ranked, nodes)`: up to k `(choice, value)` pairs, best first, and the search nodes visited.
pub type RankedChoices = (Vec<(Vec<usize>, f64)>, u64);

/// The `k` most valuable choices under the limits, exactly, for `proxyless_rs.constrained_export`
/// and the strategies' `export_top_models`.
///
/// `values[g][i]` is the log-probability of candidate `i` of group `g` (`-inf` for zero),
/// `costs[g][i][k]` its cost `k`, `limits[k]` the limit of cost `k` (`inf`: none). Returns
/// `(ranked, nodes)`: up to `k` pairs `(choice, value)`, best first (the candidate index per
/// group and the summed value; empty when no choice meets every limit, up to a relative 1e-9),
/// and the number of search nodes visited.
#[pyfunction]
#[pyo3(name = "constrained_choices", signature = (values, costs, limits, k = 1))]
pub fn py_constrained_choices(
    py: Python<'_>,
    values: Vec<Vec<f64>>,
    costs: Vec<Vec<Vec<f64>>>,
    limits: Vec<f64>,
    k: usize,
) -> PyResult<RankedChoices> {
    let problem = Problem { values, costs, limits };
    let (ranked, nodes) = py
        .allow_threads(|| solve_top(&problem, k))
        .map_err(|e| PyValueError::new_err(format!("constrained_choices: {e}")))?;
    Ok((ranked.into_iter().map(|r| (r.choice, r.value)).collect(), nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the tests need no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn random_problem(rng: &mut Rng, groups: usize, items: usize, n_costs: usize, tightness: f64) -> Problem {
        let values: Vec<Vec<f64>> = (0..groups).map(|_| (0..items).map(|_| -5.0 * rng.next()).collect()).collect();
        let costs: Vec<Vec<Vec<f64>>> = (0..groups)
            .map(|_| (0..items).map(|_| (0..n_costs).map(|_| 10.0 * rng.next()).collect()).collect())
            .collect();
        let limits = (0..n_costs)
            .map(|k| {
                let lo: f64 =
                    costs.iter().map(|g| g.iter().map(|c: &Vec<f64>| c[k]).fold(f64::INFINITY, f64::min)).sum();
                let hi: f64 = costs.iter().map(|g| g.iter().map(|c: &Vec<f64>| c[k]).fold(0.0, f64::max)).sum();
                lo + tightness * (hi - lo)
            })
            .collect();
        Problem { values, costs, limits }
    }

    fn brute_force(problem: &Problem) -> Option<(Vec<usize>, f64)> {
        brute_force_ranking(problem).into_iter().next()
    }

    #[test]
    fn equals_brute_force_on_random_problems() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for case in 0..300 {
            let n_costs = 1 + case % 3;
            let tightness = [0.0, 0.05, 0.2, 0.4, 0.7, 1.0][case % 6];
            let problem = random_problem(&mut rng, 2 + case % 5, 2 + case % 4, n_costs, tightness);
            let solved = solve(&problem).unwrap();
            let expected = brute_force(&problem);
            match (solved, expected) {
                (None, None) => {}
                (Some(s), Some((choice, value))) => {
                    assert_eq!(s.choice, choice, "case {case}: {problem:?}");
                    assert!((s.value - value).abs() < 1e-12);
                }
                (s, e) => panic!("case {case}: solver {s:?}, brute force {e:?}"),
            }
        }
    }

    /// Every choice within the limits, best first, ties in lexicographic order.
    fn brute_force_ranking(problem: &Problem) -> Vec<(Vec<usize>, f64)> {
        let limits: Vec<f64> = problem.limits.iter().map(|&l| slack_limit(l)).collect();
        let mut all = Vec::new();
        let mut choice = vec![0; problem.values.len()];
        loop {
            let value: f64 = choice.iter().enumerate().map(|(g, &i)| problem.values[g][i]).sum();
            let fits = (0..limits.len())
                .all(|k| choice.iter().enumerate().map(|(g, &i)| problem.costs[g][i][k]).sum::<f64>() <= limits[k]);
            if fits {
                all.push((choice.clone(), value));
            }
            let mut g = 0;
            loop {
                if g == choice.len() {
                    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                    return all;
                }
                choice[g] += 1;
                if choice[g] < problem.values[g].len() {
                    break;
                }
                choice[g] = 0;
                g += 1;
            }
        }
    }

    #[test]
    fn the_k_best_equal_brute_force_on_random_problems() {
        let mut rng = Rng(0x2545f4914f6cdd1d);
        for case in 0..300 {
            let n_costs = case % 4; // 0: no limits at all
            let tightness = [0.05, 0.2, 0.4, 0.7, 1.0][case % 5];
            let problem = random_problem(&mut rng, 2 + case % 4, 2 + case % 3, n_costs, tightness);
            let keep = [1, 2, 3, 5, 10, 40][case % 6];
            let (ranked, _) = solve_top(&problem, keep).unwrap();
            let expected = brute_force_ranking(&problem);
            let expected = &expected[..expected.len().min(keep)];
            assert_eq!(ranked.len(), expected.len(), "case {case}: {problem:?}");
            for (got, (choice, value)) in ranked.iter().zip(expected) {
                assert_eq!(&got.choice, choice, "case {case}, k {keep}: {problem:?}");
                assert!((got.value - value).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn k_best_keep_dominated_items_and_refuse_zero() {
        // One group: the second item is dominated by the first, yet it is the second best.
        let problem = Problem {
            values: vec![vec![-0.1, -0.2, -3.0]],
            costs: vec![vec![vec![1.0], vec![2.0], vec![0.5]]],
            limits: vec![5.0],
        };
        let (ranked, _) = solve_top(&problem, 3).unwrap();
        assert_eq!(ranked.iter().map(|r| r.choice[0]).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(solve_top(&problem, 0).unwrap_err().contains("at least 1"));
    }

    #[test]
    fn ties_rank_by_index_whatever_k_and_the_costs() {
        // Three equally probable items, the later ones cheaper, all within the limit: the tie order
        // (by index) holds for every k, and the best is the first.
        let problem = Problem {
            values: vec![vec![-1.0986; 3]],
            costs: vec![vec![vec![13.0], vec![8.0], vec![4.0]]],
            limits: vec![100.0],
        };
        for keep in 1..=4 {
            let (ranked, _) = solve_top(&problem, keep).unwrap();
            let choices: Vec<usize> = ranked.iter().map(|r| r.choice[0]).collect();
            assert_eq!(choices, (0..keep.min(3)).collect::<Vec<_>>(), "k = {keep}");
        }
        assert_eq!(solve(&problem).unwrap().unwrap().choice, vec![0]);
    }

    #[test]
    fn zero_probabilities_lose_to_any_positive_one() {
        let problem = Problem {
            values: vec![vec![f64::NEG_INFINITY, -3.0], vec![0.0, -40.0]],
            costs: vec![vec![vec![0.0], vec![1.0]], vec![vec![1.0], vec![0.0]]],
            limits: vec![1.0],
        };
        assert_eq!(solve(&problem).unwrap().unwrap().choice, vec![1, 1]);
    }

    #[test]
    fn refuses_what_it_cannot_meet_and_bad_input() {
        let problem =
            Problem { values: vec![vec![0.0, -1.0]], costs: vec![vec![vec![2.0], vec![3.0]]], limits: vec![1.9] };
        assert_eq!(solve(&problem).unwrap(), None);
        assert_eq!(problem.least_costs(), vec![2.0]);
        let bad = Problem { values: vec![vec![f64::NAN]], costs: vec![vec![vec![1.0]]], limits: vec![1.0] };
        assert!(solve(&bad).unwrap_err().contains("value NaN"));
    }

    #[test]
    fn hull_is_concave_and_increasing() {
        let hull = upper_hull(vec![(0.0, 0.0), (1.0, 3.0), (2.0, 4.0), (3.0, 4.5), (1.5, 1.0), (2.5, 4.0)]);
        assert_eq!(hull, vec![(0.0, 0.0), (1.0, 3.0), (2.0, 4.0), (3.0, 4.5)]);
    }
}
