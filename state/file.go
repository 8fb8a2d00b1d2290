package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// The on-disk document. Pending entries are [handle, payload] pairs, as in
// Heptapod's file.
type fileDoc struct {
	Version          *int              `json:"version"`
	JournalSeq       uint64            `json:"journal_seq"`
	Launched         []json.RawMessage `json:"launched"`
	Pending          []json.RawMessage `json:"pending"`
	ToDecommission   []json.RawMessage `json:"to_decommission"`
	StandbyResources []json.RawMessage `json:"standby_resources"`
}

func encodeHandle(j Job) ([]byte, error) { return json.Marshal(j) }

// encodeLocked renders the whole file from the cached handle encodings;
// seq is the last journal record it holds.
func (s *Store) encodeLocked(seq uint64) []byte {
	var launched, pending, decom []*entry
	for _, e := range s.jobs {
		switch {
		case e.job.Phase.Pending():
			pending = append(pending, e)
		case e.job.Phase == Decommissioning:
			decom = append(decom, e)
		default:
			launched = append(launched, e)
		}
	}
	size := 64
	for _, e := range s.jobs {
		size += len(e.enc) + len(e.job.Payload) + 8
	}
	var b bytes.Buffer
	b.Grow(size)
	fmt.Fprintf(&b, "{\"version\": %d,\n\"journal_seq\": %d,\n\"launched\": [", Version, seq)
	writeList(&b, launched, false)
	b.WriteString("],\n\"pending\": [")
	writeList(&b, pending, true)
	b.WriteString("],\n\"to_decommission\": [")
	writeList(&b, decom, false)
	b.WriteString("]}\n")
	return b.Bytes()
}

func writeList(b *bytes.Buffer, es []*entry, pairs bool) {
	sort.Slice(es, func(i, j int) bool { return less(es[i].job.Key(), es[j].job.Key()) })
	for i, e := range es {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("\n  ")
		if !pairs {
			b.Write(e.enc)
			continue
		}
		b.WriteByte('[')
		b.Write(e.enc)
		b.WriteString(", ")
		if len(e.job.Payload) == 0 {
			b.WriteString("null")
		} else {
			b.Write(e.job.Payload)
		}
		b.WriteByte(']')
	}
}

// load reads the file into s.jobs.
func (s *Store) load() error {
	if fi, err := os.Stat(s.path); err == nil && fi.IsDir() {
		return fmt.Errorf("state_file: %s is a directory, not a file", s.path)
	}
	data, err := os.ReadFile(s.path)
	if os.IsNotExist(err) {
		return s.checkWritable()
	}
	if err != nil {
		return fmt.Errorf("state_file: reading %s: %w", s.path, unwrapPath(err))
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return s.checkWritable()
	}
	jobs, imported, jseq, err := decodeFile(data)
	if err != nil {
		return &FormatError{Path: s.path, Msg: err.Error() + "; refusing to start (the file is left untouched)"}
	}
	s.imported = imported
	s.snapSeq = jseq
	for _, j := range jobs {
		enc, _ := encodeHandle(j)
		s.jobs[j.Key()] = &entry{job: j, enc: enc}
	}
	return s.checkWritable()
}

// checkWritable fails early when the state file could not be replaced.
func (s *Store) checkWritable() error {
	f, err := os.CreateTemp(filepath.Dir(s.path), ".paas-runner-probe*")
	if err != nil {
		return fmt.Errorf("state_file: directory %s is not writable: %w", filepath.Dir(s.path), errors.Unwrap(err))
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// decodeFile parses a state file of this or Heptapod's format.
func decodeFile(data []byte) (jobs []Job, imported bool, journalSeq uint64, err error) {
	var doc fileDoc
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return nil, false, 0, fmt.Errorf("corrupted state file: %v", err)
	}
	if dec.More() {
		return nil, false, 0, fmt.Errorf("corrupted state file: trailing data after the JSON document")
	}
	switch {
	case doc.Version == nil:
		imported = true
	case *doc.Version > Version:
		return nil, false, 0, fmt.Errorf("state file version %d is newer than this paas-runner understands (%d); upgrade paas-runner", *doc.Version, Version)
	case *doc.Version < 1:
		return nil, false, 0, fmt.Errorf("corrupted state file: invalid version %d", *doc.Version)
	}
	seen := map[Key]string{}
	add := func(j Job, section string) error {
		if j.RunnerID == "" || j.JobID <= 0 {
			return fmt.Errorf("corrupted state file: %s entry without runner_name or job_id", section)
		}
		if prev, dup := seen[j.Key()]; dup {
			return fmt.Errorf("corrupted state file: job %s is both in %s and %s", j.Key(), prev, section)
		}
		seen[j.Key()] = section
		if imported {
			j.Imported = true
		}
		jobs = append(jobs, j)
		return nil
	}
	decodeList := func(list []json.RawMessage, section string, phase Phase) error {
		for i, raw := range list {
			var j Job
			if err := json.Unmarshal(raw, &j); err != nil {
				return fmt.Errorf("corrupted state file: %s[%d]: %v", section, i, err)
			}
			if j.Phase == "" || phase != Launched {
				j.Phase = phase
			}
			if err := add(j, section); err != nil {
				return err
			}
		}
		return nil
	}
	if err := decodeList(doc.Launched, "launched", Launched); err != nil {
		return nil, false, 0, err
	}
	if err := decodeList(doc.ToDecommission, "to_decommission", Decommissioning); err != nil {
		return nil, false, 0, err
	}
	// Heptapod's standby resources wait for reuse; paas-runner does not
	// reuse hosts, so they are removed.
	if err := decodeList(doc.StandbyResources, "standby_resources", Decommissioning); err != nil {
		return nil, false, 0, err
	}
	for i, raw := range doc.Pending {
		var pair []json.RawMessage
		if err := json.Unmarshal(raw, &pair); err != nil || len(pair) != 2 {
			return nil, false, 0, fmt.Errorf("corrupted state file: pending[%d] is not a [handle, payload] pair", i)
		}
		var j Job
		if err := json.Unmarshal(pair[0], &j); err != nil {
			return nil, false, 0, fmt.Errorf("corrupted state file: pending[%d]: %v", i, err)
		}
		if !j.Phase.Pending() {
			// Heptapod does not record how far a launch went: if a
			// resource exists it may be provisioned and even launched.
			j.Phase = Acquired
			if len(j.Resource) > 0 && string(j.Resource) != "null" {
				j.Phase = Launching
			}
		}
		if p := bytes.TrimSpace(pair[1]); len(p) > 0 && string(p) != "null" {
			j.Payload = append(json.RawMessage(nil), p...)
		}
		if err := add(j, "pending"); err != nil {
			return nil, false, 0, err
		}
	}
	return jobs, imported, doc.JournalSeq, nil
}

// unwrapPath drops the *os.PathError around err: messages name the path
// themselves.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
