package state

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSaveLoadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state") // created by Open
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if recs, v, err := s.Load(); err != nil || len(recs) != 0 || v != Version {
		t.Fatalf("empty dir: %v, %v", recs, err)
	}
	want := []json.RawMessage{json.RawMessage(`{"id":"a"}`), json.RawMessage(`{"id":"b"}`)}
	if err := s.Save(want); err != nil {
		t.Fatal(err)
	}
	got, v, err := s.Load()
	if err != nil || len(got) != 2 || v != Version {
		t.Fatalf("load: %s, %v", got, err)
	}
	var rec struct{ ID string }
	if err := json.Unmarshal(got[1], &rec); err != nil || rec.ID != "b" {
		t.Fatalf("record 1: %s, %v", got[1], err)
	}
	// No temporary file is left behind.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("left %s", e.Name())
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode %v, %v", fi.Mode(), err)
	}
}

// A save that a crash interrupted leaves a temporary file: the next Open
// removes it, and keeps the state file and anything else in the directory.
func TestOpenRemovesAnInterruptedSave(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "st*[") // a name, not a pattern
	files := map[string]bool{                 // name: kept
		FileName:                 true,
		FileName + ".tmp-123456": false,
		FileName + ".tmp-9":      false,
		"notes.txt":              true,
		"other.json.tmp-1":       true,
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(`{"version":1,"listeners":[]}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for name, kept := range files {
		if _, err := os.Stat(filepath.Join(dir, name)); (err == nil) != kept {
			t.Errorf("%s: stat %v after Open, want kept=%v", name, err, kept)
		}
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	s.Close()
	s2, err := Open(dir)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	s2.Close()
}

func TestCorruptFilesNameTheFile(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Save([]json.RawMessage{json.RawMessage(`{"id":"a"}`)}); err != nil {
		t.Fatal(err)
	}
	full, _ := os.ReadFile(s.Path())
	for name, data := range map[string][]byte{
		"cut mid-write":   full[:len(full)/2],
		"empty":           {},
		"other version":   []byte(`{"version": 99, "listeners": []}`),
		"unknown field":   []byte(`{"version": 1, "listeners": [], "x": 1}`),
		"trailing":        append(append([]byte{}, full...), []byte("{}")...),
		"trailing brace":  append(append([]byte{}, full...), []byte("}{")...),
		"trailing ]":      append(append([]byte{}, full...), []byte("\n]")...),
		"not json at all": []byte("\x00\x01garbage"),
	} {
		if err := os.WriteFile(s.Path(), data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := s.Load()
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), filepath.Join(dir, FileName)) {
			t.Errorf("%s: %v, want ErrCorrupt naming the file", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"version":1,"listeners":[{"id":"ln-00000000"}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, v, err := Decode("fuzz", data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "fuzz") {
				t.Fatalf("error not ErrCorrupt naming the file: %v", err)
			}
			return
		}
		if v < MinVersion || v > Version {
			t.Fatalf("decoded version %d, outside %d-%d", v, MinVersion, Version)
		}
		// What decodes is valid JSON records.
		for _, r := range recs {
			if !json.Valid(r) {
				t.Fatalf("invalid record %q", r)
			}
		}
	})
}
