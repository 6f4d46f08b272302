package ctl

import (
	"regexp"
	"strings"

	"github.com/spf13/pflag"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// fieldAnnotation marks a flag with the request field it sets (a path such
// as spec.allow_cidrs), so that an error the daemon gives about that field
// names the flag the user typed instead (--allow). Each command's flags
// say it where they are registered (annotateField); flagError reads them.
const fieldAnnotation = "listenerd.field"

// annotateField records that flag sets field.
func annotateField(fs *pflag.FlagSet, flag, field string) {
	if err := fs.SetAnnotation(flag, fieldAnnotation, []string{field}); err != nil {
		panic("ctl: annotating a flag that does not exist: " + flag) // a programming error, caught by every test
	}
}

// fieldPath matches a field path at the start of a daemon's message:
// spec.allow_cidrs[0], spec.limits.max_connections, name.
var fieldPath = regexp.MustCompile(`^[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*`)

// index matches a repeated field's index.
var index = regexp.MustCompile(`\[\d+\]`)

// flagFor returns the flag of fs that sets field (its indexes dropped), or
// of the nearest enclosing field that has one (spec.faults[0].latency is
// --fault, spec.handler.forward is --mode); "" for none.
func flagFor(fs *pflag.FlagSet, field string) string {
	byField := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) {
		if v := f.Annotations[fieldAnnotation]; len(v) == 1 {
			byField[v[0]] = f.Name
		}
	})
	for p := index.ReplaceAllString(field, ""); p != ""; {
		if name, ok := byField[p]; ok {
			return name
		}
		i := strings.LastIndexByte(p, '.')
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return ""
}

// flagError rewrites a daemon's error about a request field as one about
// the flag that set it: "spec.allow_cidrs[0]: "x" is not a CIDR" reads
// "--allow: "x" is not a CIDR". The field is the BadRequest detail's, else
// the start of the message (a PERMISSION_DENIED of the listener policy
// starts so). The status code, and so the exit code, stays.
func flagError(fs *pflag.FlagSet, err error) error {
	st, ok := grpcStatus(err)
	if !ok {
		return err
	}
	field := ""
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			field = br.GetFieldViolations()[0].GetField()
			break
		}
	}
	msg := st.Message()
	if field == "" {
		if m := fieldPath.FindString(msg); m != "" && strings.HasPrefix(msg[len(m):], ": ") {
			field = m
		}
	}
	flag := flagFor(fs, field)
	if flag == "" {
		return err
	}
	if strings.Contains(msg, field) {
		msg = strings.Replace(msg, field, "--"+flag, 1)
	} else {
		msg = "--" + flag + ": " + msg
	}
	p := st.Proto()
	p.Message = msg
	return status.FromProto(p).Err()
}
