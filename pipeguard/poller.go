package pipeguard

import (
	"context"
	"fmt"
	"time"
)

// Waiter is one job waiting on a pipeline guard: its own pipeline and rule.
type Waiter struct {
	PipelineID int64
	Rule       *Rule
}

// Result is one waiter's outcome of a poll.
type Result struct {
	Decision Decision
	// Err ends the waiter's wait: a cancel GitLab refused (token without
	// the api scope). The other waiters are not affected.
	Err error
}

// Poller answers every waiter of one project (one token) from a single
// round of requests: one pipelines listing per distinct server-side query
// (one for waiters sharing a rule), the jobs of each pipeline a narrowed
// rule needs, once, and the cancels newest_wins asks for. It keeps no state
// between polls.
type Poller struct {
	Client *Client
	// Now stamps snapshots; nil = time.Now.
	Now func() time.Time

	listings map[string]*Snapshot // the last Poll's, by query key
}

// Listings are the last successful Poll's listings (no jobs), by query key
// (Query.Key); nil after a failed one. Not safe during a Poll.
func (p *Poller) Listings() map[string]*Snapshot { return p.listings }

// Poll does one round for the waiters of project and returns their results
// in order. A listing error is returned as is (the caller backs off, or,
// when Permanent, ends every wait); nothing is decided then.
func (p *Poller) Poll(ctx context.Context, token, project string, waiters []Waiter) ([]Result, error) {
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	p.listings = nil
	byQuery := map[string]*Snapshot{}
	snaps := make([]*Snapshot, len(waiters))
	for i, w := range waiters {
		q := w.Rule.Query()
		s, ok := byQuery[q.Key()]
		if !ok {
			ps, err := p.Client.Pipelines(ctx, token, project, q)
			if err != nil {
				return nil, err
			}
			s = &Snapshot{Pipelines: ps, At: now()}
			byQuery[q.Key()] = s
		}
		snaps[i] = s
	}
	listings := byQuery
	// Jobs of the pipelines narrowed rules look at, each fetched once per
	// snapshot and job scope.
	jobsCache := map[string][]Job{}
	results := make([]Result, len(waiters))
	for i, w := range waiters {
		if !w.Rule.Narrowed() {
			continue
		}
		need := w.Rule.NeedJobs(snaps[i].Pipelines, w.PipelineID)
		if len(need) == 0 {
			continue
		}
		// Waiters with different job scopes but the same query need their
		// own job lists: give them their own snapshot view.
		scope := w.Rule.JobScope()
		view := &Snapshot{Pipelines: snaps[i].Pipelines, At: snaps[i].At, Jobs: map[int64][]Job{}}
		for _, pid := range need {
			key := fmt.Sprint(pid, scope)
			jobs, ok := jobsCache[key]
			if !ok {
				var err error
				jobs, err = p.Client.PipelineJobs(ctx, token, project, pid, scope)
				if err != nil {
					if ae, isAPI := err.(*APIError); isAPI && ae.Status == 404 {
						jobs = nil // pipeline deleted meanwhile: no jobs, no conflict
					} else {
						return nil, err
					}
				}
				jobsCache[key] = jobs
			}
			view.Jobs[pid] = jobs
		}
		snaps[i] = view
	}
	cancelled := map[int64]Pipeline{}
	for i, w := range waiters {
		d := w.Rule.Evaluate(snaps[i], w.PipelineID)
		if len(d.Cancel) > 0 {
			var err error
			for _, c := range d.Cancel {
				if _, done := cancelled[c.ID]; done {
					continue
				}
				got, cerr := p.Client.Cancel(ctx, token, project, c.ID)
				if ae, isAPI := cerr.(*APIError); isAPI && ae.Status == 404 {
					// deleted meanwhile: gone, not a conflict (a 404 is
					// Permanent, and would end every waiter's wait)
					cancelled[c.ID] = Pipeline{ID: c.ID}
					continue
				}
				if cerr != nil {
					if TokenRejected(cerr) {
						err = fmt.Errorf("cannot cancel older pipeline %d: GUARD_CANCEL_OLDER needs a guard token with the api scope: %w", c.ID, cerr)
						break
					}
					return nil, cerr
				}
				cancelled[c.ID] = got
			}
			if err != nil {
				results[i] = Result{Decision: d, Err: err}
				continue
			}
			// Decide again on what GitLab answered to the cancels.
			patched := *snaps[i]
			patched.Pipelines = make([]Pipeline, 0, len(snaps[i].Pipelines))
			for _, pl := range snaps[i].Pipelines {
				if got, ok := cancelled[pl.ID]; ok && got.ID == pl.ID {
					if got.Status == "" {
						continue // deleted
					}
					pl.Status = got.Status
				}
				patched.Pipelines = append(patched.Pipelines, pl)
			}
			var done []Pipeline
			for _, c := range d.Cancel {
				if got := cancelled[c.ID]; got.ID == c.ID && got.Status != "" {
					c.Status = got.Status
					done = append(done, c)
				}
			}
			d = w.Rule.Evaluate(&patched, w.PipelineID)
			if d.Verdict == Wait && w.Rule.NoWait && len(d.Cancel) > 0 {
				d.Verdict = Conflict // still conflicting after the cancel
			}
			d.Cancel, d.Cancelled = nil, done
		}
		results[i] = Result{Decision: d}
	}
	p.listings = listings
	return results, nil
}
