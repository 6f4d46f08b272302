package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/listenerd/listenerd/internal/fleet"
)

var (
	descFleetPublished = prometheus.NewDesc(namespace+"_fleet_published_total",
		"Messages published to NATS JetStream (events of one subject packed together, and gap records), repeats after a failure included.", nil, nil)
	descFleetPublishedEvents = prometheus.NewDesc(namespace+"_fleet_published_events_total",
		"Events in the messages published, repeats after a failure included.", nil, nil)
	descFleetAcked = prometheus.NewDesc(namespace+"_fleet_acked_total",
		"Publishes JetStream acknowledged.", nil, nil)
	descFleetFailed = prometheus.NewDesc(namespace+"_fleet_failed_total",
		"Publishes that failed (no ack in time, disconnected, refused); the publisher resumes from the last acknowledged event.", nil, nil)
	descFleetFailedEvents = prometheus.NewDesc(namespace+"_fleet_failed_events_total",
		"Events in the publishes that failed.", nil, nil)
	descFleetGaps = prometheus.NewDesc(namespace+"_fleet_gaps_total",
		"Gap records published: events the history no longer held when NATS came back.", nil, nil)
	descFleetLag = prometheus.NewDesc(namespace+"_fleet_lag_events",
		"Events recorded and not yet acknowledged by JetStream.", nil, nil)
	descFleetAckedSeq = prometheus.NewDesc(namespace+"_fleet_acked_sequence",
		"The last event sequence of this boot JetStream acknowledged: every event up to it is in the stream (or named by a gap record), and stays there if the daemon dies.", nil, nil)
)

// FleetPublisher is what the fleet metrics read at scrape time: a
// *fleet.Publisher.
type FleetPublisher interface {
	Stats() fleet.Stats
	Acked() uint64
}

// CollectFleet registers the fleet publisher's counters, read from pub
// at scrape time. Call it once.
func (m *Metrics) CollectFleet(pub FleetPublisher) {
	m.reg.MustRegister(fleetCollector{pub})
}

type fleetCollector struct{ pub FleetPublisher }

func (c fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFleetPublished, descFleetPublishedEvents, descFleetAcked, descFleetFailed,
		descFleetFailedEvents, descFleetGaps, descFleetLag, descFleetAckedSeq} {
		ch <- d
	}
}

func (c fleetCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pub.Stats()
	ch <- prometheus.MustNewConstMetric(descFleetAckedSeq, prometheus.GaugeValue, float64(c.pub.Acked()))
	ch <- prometheus.MustNewConstMetric(descFleetPublished, prometheus.CounterValue, float64(s.Published))
	ch <- prometheus.MustNewConstMetric(descFleetAcked, prometheus.CounterValue, float64(s.Acked))
	ch <- prometheus.MustNewConstMetric(descFleetPublishedEvents, prometheus.CounterValue, float64(s.Events))
	ch <- prometheus.MustNewConstMetric(descFleetFailed, prometheus.CounterValue, float64(s.Failed))
	ch <- prometheus.MustNewConstMetric(descFleetFailedEvents, prometheus.CounterValue, float64(s.FailedEvents))
	ch <- prometheus.MustNewConstMetric(descFleetGaps, prometheus.CounterValue, float64(s.Gaps))
	ch <- prometheus.MustNewConstMetric(descFleetLag, prometheus.GaugeValue, float64(s.Lag))
}
