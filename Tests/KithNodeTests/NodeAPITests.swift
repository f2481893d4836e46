import Foundation
import KithCrypto
import KithHTTP
import KithJSON
import KithNet
import KithPolicy
import Synchronization
import Testing

@testable import KithNode

/// A node built in the test over the in-memory store and driven through `Node.handle` with a
/// recording responder: every route, its refusals and its answers, without a socket.
private final class InProcessNode {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kith-api-\(UUID().uuidString)").path
    let node: Node
    static let writeKey = "wk-test"
    /// One bearer token per role, each granted every purpose.
    static let tokens: [Role: String] = Dictionary(uniqueKeysWithValues: Role.allCases.map { ($0, "token-\($0.rawValue)") })

    init() throws {
        var configuration = NodeConfiguration()
        configuration.dataDirectory = directory + "/data"
        configuration.secretFile = directory + "/secret"
        configuration.http = "127.0.0.1:0"
        configuration.writeKeys = [Self.writeKey]
        configuration.tokens = Self.tokens.map { role, token in
            NodeConfiguration.Token(name: role.rawValue, sha256: Crypto.hex(Crypto.sha256(Array(token.utf8))), role: role.rawValue, purposes: ["*"])
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        node = try Node(configuration: configuration, storeInMemory: true)
    }

    /// The node's answer to one request, waited for (handlers may answer on another thread).
    func call(_ method: String, _ target: String, role: Role? = nil, headers: [HTTPHeader] = [], body: String = "") -> HTTPResponse? {
        var headers = headers
        if let role { headers.append(HTTPHeader("Authorization", "Bearer \(Self.tokens[role]!)")) }
        let answered = Mutex<HTTPResponse?>(nil)
        let request = HTTPRequest(method: method, target: target, version: .http11, headers: headers, body: Array(body.utf8))
        node.handle(request, HTTPResponder { response in answered.withLock { if $0 == nil { $0 = response } } })
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            if let response = answered.withLock({ $0 }) { return response }
            Thread.sleep(forTimeInterval: 0.002)
        }
        return nil
    }

    func ingest(_ path: String, _ body: String) -> HTTPResponse? {
        call("POST", path, headers: [HTTPHeader("Authorization", "Basic " + Data("\(Self.writeKey):".utf8).base64EncodedString())], body: body)
    }

    deinit {
        node.stop()
        try? FileManager.default.removeItem(atPath: directory)  // a temporary directory; a leftover is harmless
    }
}

extension HTTPResponse {
    fileprivate var json: JSONValue? { try? JSONParser.parse(body) }  // nil: not JSON, which the callers check
    fileprivate var errorCode: String? { json?["error"]?["code"]?.stringValue ?? json?["code"]?.stringValue }
}

/// A concrete path for a route's pattern.
private func path(_ pattern: String) -> String {
    pattern.replacingOccurrences(of: "{identifier}", with: "user_id:u-api").replacingOccurrences(of: "{other}", with: "anonymous_id:a-api")
}

@Suite("The HTTP API in process", .serialized)
struct NodeAPITests {
    /// Every route of the table, with its access: no credentials → 401; a role the route does
    /// not allow → 403; an allowed role → past both (whatever the handler answers then).
    @Test func everyRouteRefusesTheWrongCallerAndAdmitsTheRightOne() throws {
        let api = try InProcessNode()
        for route in Node.routes.routes {
            let target = path(route.pattern.description) + (route.pattern.description.hasPrefix("/v1/profiles/") ? "?purpose=support" : "")
            let name = "\(route.method) \(route.pattern)"
            switch route.value.access {
            case .anyone:
                #expect(api.call(route.method, target)?.status == 200, "\(name)")
            case .writeKey:
                let refused = api.call(route.method, target, body: #"{"userId":"u-1","messageId":"m-1"}"#)
                #expect(refused?.status == 401 && refused?.errorCode == "invalid_write_key", "\(name)")
            case .roles(let roles):
                let anonymous = api.call(route.method, target)
                #expect(anonymous?.status == 401 && anonymous?.errorCode == "unauthorized", "\(name) without a token: \(anonymous?.status ?? 0)")
                for role in Role.allCases {
                    let answer = api.call(route.method, target, role: role)
                    if roles.contains(role) {
                        #expect(answer.map { ![401, 403].contains($0.status) } == true, "\(name) as \(role): \(answer?.status ?? 0)")
                    } else {
                        #expect(answer?.status == 403 && answer?.errorCode == "forbidden", "\(name) as \(role): \(answer?.status ?? 0)")
                    }
                }
            }
        }
    }

    /// What only the privacy role may do (docs/privacy.md): erase, consent and restriction
    /// changes, the customer's export and audit trail.
    @Test func thePrivacyRoleAloneErasesChangesConsentAndExports() {
        let privacyOnly = Node.routes.routes.filter { $0.value.access == .roles([.privacy]) }.map { "\($0.method) \($0.pattern)" }
        #expect(
            Set(privacyOnly) == [
                "DELETE /v1/profiles/{identifier}", "PUT /v1/profiles/{identifier}/consent", "POST /v1/profiles/{identifier}/restrict",
                "DELETE /v1/profiles/{identifier}/restrict", "GET /v1/profiles/{identifier}/export", "GET /v1/profiles/{identifier}/audit",
            ])
    }

    /// A path the table knows under other methods answers 405 with `Allow`; an unknown one 404;
    /// both with a JSON error body.
    @Test func unknownPathsAndMethodsAreRefusedWithTheRightStatus() throws {
        let api = try InProcessNode()
        let profile = api.call("PATCH", "/v1/profiles/user_id:u-1", role: .admin)
        #expect(profile?.status == 405 && profile?.errorCode == "method_not_allowed")
        #expect(profile?.headers.first { $0.name == "Allow" }?.value == "GET, DELETE")
        let ingest = api.call("GET", "/v1/track")
        #expect(ingest?.status == 405 && ingest?.headers.first { $0.name == "Allow" }?.value == "POST")
        for target in ["/v1/nothing", "/v1/profiles/user_id:u-1/unknown", "/v1/profiles/", "/v1/admin/status/extra"] {
            let answer = api.call("GET", target, role: .admin)
            #expect(answer?.status == 404 && answer?.errorCode == "not_found", "\(target): \(answer?.status ?? 0)")
        }
    }

    /// Purposes: a read needs one, known to the policy and held by the token.
    @Test func readsNeedAPurposeTheTokenHolds() throws {
        let api = try InProcessNode()
        #expect(api.ingest("/v1/identify", #"{"userId":"u-p","traits":{"plan":"plus"},"messageId":"m-p"}"#)?.status == 200)
        #expect(api.call("GET", "/v1/profiles/user_id:u-p", role: .reader)?.status == 400)
        #expect(api.call("GET", "/v1/profiles/user_id:u-p?purpose=astrology", role: .reader)?.status == 400)
        let read = api.call("GET", "/v1/profiles/user_id:u-p?purpose=support", role: .reader)
        #expect(read?.status == 200 && read?.json?["traits"]?["plan"]?.stringValue == "plus")
        #expect(api.call("GET", "/v1/profiles/not-an-identifier?purpose=support", role: .reader)?.errorCode == "invalid_identifier")
        #expect(api.call("GET", "/v1/profiles/user_id:nobody?purpose=support", role: .reader)?.status == 404)
    }

    /// The life of one customer through the privacy routes, in process.
    @Test func aCustomerThroughConsentRestrictionExportAndErasure() throws {
        let api = try InProcessNode()
        #expect(api.ingest("/v1/identify", #"{"userId":"u-c","anonymousId":"a-c","traits":{"city":"Leeds"},"messageId":"m-c"}"#)?.status == 200)
        #expect(api.ingest("/v1/track", #"{"userId":"u-c","event":"Visit","messageId":"m-t"}"#)?.status == 200)
        let consent = api.call("PUT", "/v1/profiles/user_id:u-c/consent", role: .privacy, body: #"{"categoryPreferences":{"analytics":false}}"#)
        #expect(consent?.status == 200)
        #expect(api.call("GET", "/v1/profiles/user_id:u-c/consent", role: .privacy)?.status == 200)
        #expect(api.call("POST", "/v1/profiles/user_id:u-c/restrict", role: .privacy)?.json?["restricted"] == .bool(true))
        #expect(api.call("DELETE", "/v1/profiles/user_id:u-c/restrict", role: .privacy)?.json?["restricted"] == .bool(false))
        let events = api.call("GET", "/v1/profiles/user_id:u-c/events?purpose=support", role: .reader)
        #expect(events?.status == 200 && events?.json?["events"]?.arrayValue?.isEmpty == false)
        let export = api.call("GET", "/v1/profiles/user_id:u-c/export", role: .privacy)
        #expect(export?.status == 200 && export?.json?["links"]?["links"]?.arrayValue?.count == 1)
        #expect(api.call("GET", "/v1/profiles/user_id:u-c/audit", role: .privacy)?.status == 200)
        #expect(api.call("DELETE", "/v1/profiles/user_id:u-c/links/anonymous_id:a-c", role: .admin)?.json?["unlinked"] == .bool(true))
        #expect(api.call("DELETE", "/v1/profiles/user_id:u-c/links/anonymous_id:never-linked", role: .admin)?.status == 404)
        let erased = api.call("DELETE", "/v1/profiles/user_id:u-c", role: .privacy)
        #expect(erased?.status == 200 && erased?.json?["erased"] == .bool(true))
        #expect(api.call("GET", "/v1/profiles/user_id:u-c?purpose=support", role: .reader)?.status == 404)
    }

    /// Operations, in process: status, metrics, export; the cluster routes on a node alone say so.
    @Test func operatorRoutesAnswer() throws {
        let api = try InProcessNode()
        #expect(api.call("GET", "/v1/admin/status", role: .admin)?.status == 200)
        let metrics = api.call("GET", "/metrics", role: .admin)
        #expect(metrics?.status == 200 && String(decoding: metrics?.body ?? [], as: UTF8.self).contains("kith_commits_total"))
        #expect(api.call("GET", "/v1/admin/export?limit=0", role: .admin)?.status == 400)
        // A store in memory has no file to copy: the backup says so.
        #expect(api.call("POST", "/v1/admin/backup", role: .admin, body: #"{"directory":"/tmp/x"}"#)?.errorCode == "backup_failed")
        for (method, target) in [("GET", "/v1/admin/members"), ("POST", "/v1/admin/join"), ("GET", "/v1/admin/sync")] {
            let answer = api.call(method, target, role: .admin, body: #"{"address":"127.0.0.1:1"}"#)
            #expect(answer?.status == 409 && answer?.errorCode == "not_clustered", "\(target)")
        }
    }
}

@Suite("Route table")
struct RouteTableTests {
    let table = RouteTable<Int>([
        .init("GET", "/v1/profiles/{identifier}", 1), .init("DELETE", "/v1/profiles/{identifier}", 2),
        .init("GET", "/v1/profiles/{identifier}/links", 3), .init("DELETE", "/v1/profiles/{identifier}/links/{other}", 4),
        .init("GET", "/v1/admin/status", 5), .init("GET", "/v1/{anything}", 6),
    ])

    @Test func matchesMethodPatternAndParameters() {
        guard case .found(let route, let parameters) = table.match(method: "DELETE", path: "/v1/profiles/user_id:u%2F1/links/email:a") else {
            Issue.record("no match")
            return
        }
        #expect(route.value == 4 && parameters["identifier"] == "user_id:u%2F1" && parameters["other"] == "email:a" && parameters["none"] == nil)
        // A literal listed first wins over a parameter that would also match.
        guard case .found(let status, _) = table.match(method: "GET", path: "/v1/admin/status") else {
            Issue.record("no match")
            return
        }
        #expect(status.value == 5)
    }

    @Test func otherMethodsAndUnknownPaths() {
        guard case .methodNotAllowed(let allowed, let pattern) = table.match(method: "PUT", path: "/v1/profiles/x") else {
            Issue.record("not 405")
            return
        }
        #expect(allowed == ["GET", "DELETE"] && pattern.description == "/v1/profiles/{identifier}")
        for path in ["/v1/profiles/x/y", "/v2/x", "/v1/profiles/", "/", "/v1/profiles//links"] {
            if case .notFound = table.match(method: "GET", path: Substring(path)) {} else { Issue.record("\(path) matched") }
        }
    }

    @Test func queryItemsAndPercentDecoding() {
        let request = HTTPRequest(method: "GET", target: "/x?purpose=support&name=a+b%21&empty&bad=%zz", version: .http11, headers: [], body: [])
        #expect(request.queryItems == ["purpose": "support", "name": "a b!", "empty": ""])
        #expect(HTTPRequest.percentDecoded("email:a%40example.com") == "email:a@example.com")
        #expect(HTTPRequest.percentDecoded("%e2%82%ac") == "€" && HTTPRequest.percentDecoded("%ff") == nil && HTTPRequest.percentDecoded("%4") == nil)
    }
}
