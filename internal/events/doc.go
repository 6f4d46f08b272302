// Package events is the daemon's event vocabulary and its bus: one
// daemon-wide sequence, a bounded in-memory history, and watchers that read
// from that history at their own pace without ever slowing a publisher.
package events
