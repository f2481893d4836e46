import Foundation
import Testing

@testable import KithAPI

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

    /// The audit queue is a gauge an alert watches: it shows the records waiting.
    @Test func theAuditQueueIsMeasured() throws {
        let api = try TestAPI()
        #expect(try #require(api.call("GET", "/metrics", role: .admin)).text.contains("kith_audit_queue_records 0\n"))
        api.audit.refuse()
        #expect(try #require(api.call("GET", "/metrics", role: .admin)).text.contains("kith_audit_queue_records 1\n"))
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

/// docs/openapi.yaml describes every route of the route table, and nothing else. (Its validity
/// as OpenAPI 3.1 is checked by `make test` with openapi-spec-validator.)
@Suite("The OpenAPI description against the route table")
struct OpenAPIDescriptionTests {
    /// `METHOD /pattern` for every operation of the description: paths at two spaces, their
    /// methods at four, or a `$ref` to a path item under `components.pathItems` whose methods are
    /// at six. A reading of this repository's own file, not of YAML at large.
    static func operations(in text: String) -> Set<String> {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let methods = ["get", "put", "post", "delete", "patch", "head", "options"]
        func indent(_ line: String) -> Int { line.prefix { $0 == " " }.count }
        func key(_ line: String) -> String { String(line.trimmingCharacters(in: .whitespaces).prefix { $0 != ":" }) }
        var pathItems: [String: [String]] = [:]
        var current: String?
        var inPathItems = false
        for line in lines {
            if indent(line) == 2 { inPathItems = key(line) == "pathItems" }
            if inPathItems && indent(line) == 4 { current = key(line) }
            if inPathItems, indent(line) == 6, let current, methods.contains(key(line)) { pathItems[current, default: []].append(key(line)) }
        }
        var operations = Set<String>()
        var path: String?
        var inPaths = false
        for line in lines {
            if indent(line) == 0 && !line.isEmpty { inPaths = key(line) == "paths" }
            guard inPaths else { continue }
            if indent(line) == 2 {
                path = key(line)
                if let reference = line.range(of: "#/components/pathItems/") {
                    let name = String(line[reference.upperBound...].prefix { $0 != "\"" })
                    for method in pathItems[name, default: []] { operations.insert(method.uppercased() + " " + path!) }
                }
            } else if indent(line) == 4, let path, methods.contains(key(line)) {
                operations.insert(key(line).uppercased() + " " + path)
            }
        }
        return operations
    }

    @Test func everyRouteIsDescribedAndNothingElse() throws {
        let described = Self.operations(in: try OperationsDocsTests.text("docs/openapi.yaml"))
        let routes = Set(NodeAPI.routes.routes.map { "\($0.method) \($0.pattern)" })
        #expect(routes.count > 30)
        #expect(routes.subtracting(described).isEmpty, "routes missing from docs/openapi.yaml: \(routes.subtracting(described).sorted())")
        #expect(described.subtracting(routes).isEmpty, "described but not routes: \(described.subtracting(routes).sorted())")
    }
}
