package state

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
)

// The journal (state.json.journal) makes a write-ahead cost one small
// append and fdatasync instead of rewriting every job: each change is a
// JSON line {"seq":N,"put":<handle>,"payload":…} or {"seq":N,"del":…}.
// The state file is the snapshot: it records the last journal seq it holds
// ("journal_seq"), so replay applies only later records, and the journal is
// emptied after each snapshot (at the latest at shutdown, leaving the state
// file complete on its own).

type journalRecord struct {
	Seq     uint64          `json:"seq"`
	Put     json.RawMessage `json:"put,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
	Del     *struct {
		Runner string `json:"runner_name"`
		ID     int64  `json:"job_id"`
	} `json:"del,omitempty"`
}

func putRecord(seq uint64, e *entry) []byte {
	var b bytes.Buffer
	b.WriteString(`{"seq":`)
	b.WriteString(strconv.FormatUint(seq, 10))
	b.WriteString(`,"put":`)
	b.Write(e.enc)
	if len(e.job.Payload) > 0 {
		b.WriteString(`,"payload":`)
		b.Write(e.job.Payload)
	}
	b.WriteString("}\n")
	return b.Bytes()
}

func delRecord(seq uint64, k Key) []byte {
	r, _ := json.Marshal(k.Runner)
	return []byte(fmt.Sprintf(`{"seq":%d,"del":{"runner_name":%s,"job_id":%d}}`+"\n", seq, r, k.ID))
}

func journalPath(statePath string) string { return statePath + ".journal" }

// replayJournal applies the journal's records newer than afterSeq to jobs
// and returns the highest seq seen. A last line cut short (a crash while
// appending: never acknowledged) is ignored; a bad line before the end
// means the journal is corrupted.
func replayJournal(path string, afterSeq uint64, jobs map[Key]*entry) (uint64, int, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return afterSeq, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	maxSeq, applied, lineNo := afterSeq, 0, 0
	for {
		line, err := r.ReadBytes('\n')
		if len(line) == 0 && err == io.EOF {
			return maxSeq, applied, nil
		}
		lineNo++
		complete := err == nil
		var rec journalRecord
		if jerr := json.Unmarshal(line, &rec); jerr != nil || rec.Seq == 0 || (rec.Put == nil && rec.Del == nil) {
			if !complete {
				return maxSeq, applied, nil // torn last write
			}
			// a complete but bad line is only acceptable as the very last
			if _, perr := r.Peek(1); perr == io.EOF {
				return maxSeq, applied, nil
			}
			return 0, 0, fmt.Errorf("corrupted journal %s: line %d", path, lineNo)
		}
		if rec.Seq <= afterSeq {
			continue
		}
		maxSeq = max(maxSeq, rec.Seq)
		applied++
		if rec.Del != nil {
			delete(jobs, Key{rec.Del.Runner, rec.Del.ID})
			continue
		}
		var j Job
		if err := json.Unmarshal(rec.Put, &j); err != nil || j.RunnerID == "" || j.JobID <= 0 {
			return 0, 0, fmt.Errorf("corrupted journal %s: line %d", path, lineNo)
		}
		if len(rec.Payload) > 0 {
			j.Payload = append(json.RawMessage(nil), rec.Payload...)
		}
		enc, _ := encodeHandle(j)
		jobs[j.Key()] = &entry{job: j, enc: enc}
		if !complete {
			return maxSeq, applied, nil
		}
	}
}

func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
