import Synchronization

/// Request counters and latency histograms, rendered in Prometheus' text format. Labels are
/// route templates and status codes only: never identifiers.
public final class NodeMetrics: Sendable {
    static let bucketBounds: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

    private struct Series {
        var count = 0
        var sum = 0.0
        var buckets = [Int](repeating: 0, count: NodeMetrics.bucketBounds.count)

        mutating func add(_ seconds: Double) {
            count += 1
            sum += seconds
            for (index, bound) in NodeMetrics.bucketBounds.enumerated() where seconds <= bound { buckets[index] += 1 }
        }
    }

    private let requests = Mutex<[String: [Int: Series]]>([:])
    let receivedMessages = Atomic<Int>(0)
    /// Reads of profiles holding consent under names the policy does not map (no names, no values).
    let unmappedConsentReads = Atomic<Int>(0)
    /// Change-feed records given to consumers, and tokens answered 410.
    let feedRecords = Atomic<Int>(0)
    let feedTokensExpired = Atomic<Int>(0)
    /// Change-feed event streams open now.
    let feedStreams = Atomic<Int>(0)

    func record(route: String, status: Int, seconds: Double) {
        // Changed where it lies: a copy taken out and written back copies its buckets (the
        // table still shares them), one allocation per request.
        requests.withLock { table in table[route, default: [:]][status, default: Series()].add(seconds) }
    }

    /// One metric without labels, with its HELP and TYPE lines.
    static func metric(_ name: String, _ type: String, _ help: String, _ value: some CustomStringConvertible) -> String {
        "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
    }

    /// One metric with a series per value of one label (peer names, reasons: never identifiers),
    /// in the order given, with its HELP and TYPE lines.
    static func family(
        _ name: String, _ type: String, _ help: String, label: String, _ series: [(value: String, count: some CustomStringConvertible)]
    ) -> String {
        series.reduce("# HELP \(name) \(help)\n# TYPE \(name) \(type)\n") { text, one in text + "\(name){\(label)=\"\(one.value)\"} \(one.count)\n" }
    }

    func prometheusText() -> String {
        let snapshot = requests.withLock { $0 }
        var text = "# HELP kith_http_requests_total HTTP requests by route and status.\n# TYPE kith_http_requests_total counter\n"
        var latency = "# HELP kith_http_request_duration_seconds Time to answer, by route.\n# TYPE kith_http_request_duration_seconds histogram\n"
        for route in snapshot.keys.sorted() {
            var merged = Series()
            for status in snapshot[route]!.keys.sorted() {
                let series = snapshot[route]![status]!
                text += "kith_http_requests_total{route=\"\(route)\",status=\"\(status)\"} \(series.count)\n"
                merged.count += series.count
                merged.sum += series.sum
                for index in merged.buckets.indices { merged.buckets[index] += series.buckets[index] }
            }
            for (index, bound) in Self.bucketBounds.enumerated() {
                latency += "kith_http_request_duration_seconds_bucket{route=\"\(route)\",le=\"\(bound)\"} \(merged.buckets[index])\n"
            }
            latency += "kith_http_request_duration_seconds_bucket{route=\"\(route)\",le=\"+Inf\"} \(merged.count)\n"
            latency += "kith_http_request_duration_seconds_sum{route=\"\(route)\"} \(merged.sum)\n"
            latency += "kith_http_request_duration_seconds_count{route=\"\(route)\"} \(merged.count)\n"
        }
        text += Self.metric("kith_ingest_messages_total", "counter", "Messages accepted for commit.", receivedMessages.load(ordering: .relaxed))
        text += Self.metric(
            "kith_consent_unmapped_reads_total", "counter", "Reads of profiles with consent under names the policy does not map.",
            unmappedConsentReads.load(ordering: .relaxed))
        text += Self.metric(
            "kith_feed_records_total", "counter", "Change-feed records given to consumers (after the read policy).",
            feedRecords.load(ordering: .relaxed))
        text += Self.metric("kith_feed_streams_open", "gauge", "Change-feed event streams open now.", feedStreams.load(ordering: .relaxed))
        text += Self.metric(
            "kith_feed_tokens_expired_total", "counter", "Change-feed requests answered 410: the log no longer held what the token lacked.",
            feedTokensExpired.load(ordering: .relaxed))
        return text + latency
    }
}
