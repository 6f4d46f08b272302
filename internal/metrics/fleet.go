package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/listenerd/listenerd/internal/fleet"
)

var (
	descFleetPublished = prometheus.NewDesc(namespace+"_fleet_published_total",
		"Events (and gap records) published to NATS JetStream, repeats after a failure included.", nil, nil)
	descFleetAcked = prometheus.NewDesc(namespace+"_fleet_acked_total",
		"Publishes JetStream acknowledged.", nil, nil)
	descFleetFailed = prometheus.NewDesc(namespace+"_fleet_failed_total",
		"Publishes that failed (no ack in time, disconnected, refused); the publisher resumes from the last acknowledged event.", nil, nil)
	descFleetGaps = prometheus.NewDesc(namespace+"_fleet_gaps_total",
		"Gap records published: events the history no longer held when NATS came back.", nil, nil)
	descFleetLag = prometheus.NewDesc(namespace+"_fleet_lag_events",
		"Events recorded and not yet acknowledged by JetStream.", nil, nil)
)

// CollectFleet registers the fleet publisher's counters, read from stats
// at scrape time. Call it once.
func (m *Metrics) CollectFleet(stats func() fleet.Stats) {
	m.reg.MustRegister(fleetCollector(stats))
}

type fleetCollector func() fleet.Stats

func (c fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFleetPublished, descFleetAcked, descFleetFailed, descFleetGaps, descFleetLag} {
		ch <- d
	}
}

func (c fleetCollector) Collect(ch chan<- prometheus.Metric) {
	s := c()
	ch <- prometheus.MustNewConstMetric(descFleetPublished, prometheus.CounterValue, float64(s.Published))
	ch <- prometheus.MustNewConstMetric(descFleetAcked, prometheus.CounterValue, float64(s.Acked))
	ch <- prometheus.MustNewConstMetric(descFleetFailed, prometheus.CounterValue, float64(s.Failed))
	ch <- prometheus.MustNewConstMetric(descFleetGaps, prometheus.CounterValue, float64(s.Gaps))
	ch <- prometheus.MustNewConstMetric(descFleetLag, prometheus.GaugeValue, float64(s.Lag))
}
