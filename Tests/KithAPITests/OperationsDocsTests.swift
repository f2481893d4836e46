import Foundation
import Testing

/// The dashboards and alerting rules in docs/operations/ name only metrics a node exposes, and
/// every alert has its section in docs/operations.md: they cannot drift from the code unseen.
@Suite("Operations docs against the metrics")
struct OperationsDocsTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func text(_ path: String) throws -> String {
        try String(contentsOf: repository.appendingPathComponent(path), encoding: .utf8)
    }

    /// `kith_…` names in `text`, histogram series reduced to their metric.
    static func metricNames(in text: String) -> Set<String> {
        let pattern = try! NSRegularExpression(pattern: "kith_[a-z_]+")  // a literal pattern
        let range = NSRange(text.startIndex..., in: text)
        return Set(
            pattern.matches(in: text, range: range).map { match in
                var name = String(text[Range(match.range, in: text)!])
                for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) { name.removeLast(suffix.count) }
                return name
            })
    }

    @Test func dashboardsAndAlertsNameOnlyExposedMetrics() throws {
        let api = try TestAPI(replicated: true)
        let metrics = try #require(api.call("GET", "/metrics", role: .admin)).text
        let exposed = Self.metricNames(in: metrics)
        #expect(exposed.count > 20, "\(exposed.sorted())")
        for file in ["docs/operations/kith-alerts.yml", "docs/operations/kith-dashboard.json"] {
            let named = Self.metricNames(in: try Self.text(file))
            #expect(!named.isEmpty)
            #expect(named.subtracting(exposed).isEmpty, "\(file) names metrics no node exposes: \(named.subtracting(exposed).sorted())")
        }
    }

    @Test func everyAlertHasItsRunbookSection() throws {
        let rules = try Self.text("docs/operations/kith-alerts.yml")
        let alerts = rules.split(separator: "\n").compactMap { line -> String? in
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            return trimmed.hasPrefix("- alert: ") ? String(trimmed.dropFirst("- alert: ".count)) : nil
        }
        let guide = try Self.text("docs/operations.md")
        #expect(alerts.count >= 8)
        for alert in alerts {
            #expect(guide.contains("### \(alert)\n"), "docs/operations.md has no section for \(alert)")
            #expect(rules.contains("docs/operations.md#\(alert.lowercased())"), "\(alert)'s runbook link")
        }
    }
}
