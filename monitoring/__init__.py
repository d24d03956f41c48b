"""What operators watch during a sale: Prometheus's target sync from Consul (monitoring.targets), the recording and
alerting rules (rules/) with their promtool tests (tests/), and the live sale board (board/), served by
Prometheus itself at /user/ (docs/monitoring.md)."""
