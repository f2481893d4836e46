import Foundation
import KithCRDT
import KithHTTP
import KithJSON
import KithPolicy
import KithProfile
import Testing

@testable import KithAPI

/// A concrete path for a route's pattern.
private func path(_ pattern: String) -> String {
    pattern.replacingOccurrences(of: "{identifier}", with: "user_id:u-api").replacingOccurrences(of: "{other}", with: "anonymous_id:a-api")
}

@Suite("The HTTP API in process")
struct NodeAPITests {
    /// Every route of the table, with its access: no credentials → 401; a role the route does
    /// not allow → 403; an allowed role → past both (whatever the handler answers then).
    @Test func everyRouteRefusesTheWrongCallerAndAdmitsTheRightOne() throws {
        let api = try TestAPI()
        for route in NodeAPI.routes.routes {
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
        let privacyOnly = NodeAPI.routes.routes.filter { $0.value.access == .roles([.privacy]) }.map { "\($0.method) \($0.pattern)" }
        #expect(
            Set(privacyOnly) == [
                "DELETE /v1/profiles/{identifier}", "PUT /v1/profiles/{identifier}/consent", "POST /v1/profiles/{identifier}/restrict",
                "DELETE /v1/profiles/{identifier}/restrict", "GET /v1/profiles/{identifier}/export", "GET /v1/profiles/{identifier}/audit",
            ])
    }

    /// A path the table knows under other methods answers 405 with `Allow`; an unknown one 404;
    /// both with a JSON error body.
    @Test func unknownPathsAndMethodsAreRefusedWithTheRightStatus() throws {
        let api = try TestAPI()
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
        let api = try TestAPI()
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
        let api = try TestAPI()
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
        let api = try TestAPI()
        #expect(api.call("GET", "/v1/admin/status", role: .admin)?.status == 200)
        let metrics = api.call("GET", "/metrics", role: .admin)
        #expect(metrics?.status == 200 && String(decoding: metrics?.body ?? [], as: UTF8.self).contains("kith_commits_total"))
        #expect(api.call("GET", "/v1/admin/export?limit=0", role: .admin)?.status == 400)
        // A store in memory has no file to copy: the backup says so.
        #expect(api.call("POST", "/v1/admin/backup", role: .admin, body: #"{"directory":"/tmp/x"}"#)?.errorCode == "backup_failed")
        // Nor a file to compact; and compaction is the admin's alone.
        let compact = api.call("POST", "/v1/admin/compact", role: .admin)
        #expect(compact?.status == 409 && compact?.errorCode == "nothing_to_compact")
        #expect(api.call("POST", "/v1/admin/compact", role: .reader)?.status == 403)
        for (method, target) in [("GET", "/v1/admin/members"), ("POST", "/v1/admin/join"), ("GET", "/v1/admin/sync")] {
            let answer = api.call(method, target, role: .admin, body: #"{"address":"127.0.0.1:1"}"#)
            #expect(answer?.status == 409 && answer?.errorCode == "not_clustered", "\(target)")
        }
    }
}

/// Every route answered with success, in process: a table of one successful call per route,
/// checked against `NodeAPI.routes`, so a route added without one fails here.
@Suite("Every route's success, in process")
struct EveryRouteSucceedsTests {
    struct Call {
        var method: String
        var pattern: String
        var target: String
        var role: Role?
        var body: String = ""
        var status = 200
    }

    static let profile = "/v1/profiles/user_id:u-ok"
    static let message: [MessageType: String] = [
        .identify: #"{"userId":"u-ok","anonymousId":"a-ok","traits":{"plan":"plus"}}"#, .track: #"{"userId":"u-ok","event":"Visit"}"#,
        .page: #"{"userId":"u-ok","name":"Home"}"#, .screen: #"{"userId":"u-ok","name":"Basket"}"#,
        .group: #"{"userId":"u-ok","groupId":"g-1","traits":{"name":"Acme"}}"#, .alias: #"{"userId":"u-ok","previousId":"a-old"}"#,
    ]

    /// In order: writes first, reads next, the link and the profile removed last.
    static var calls: [Call] {
        let read = "?purpose=support"
        let p = "/v1/profiles/{identifier}"
        return MessageType.allCases.map { Call(method: "POST", pattern: "/v1/\($0.rawValue)", target: "/v1/\($0.rawValue)", body: message[$0]!) }
            + [
                Call(method: "POST", pattern: "/v1/batch", target: "/v1/batch", body: #"{"batch":[{"type":"track","userId":"u-ok","event":"B"}]}"#),
                Call(method: "POST", pattern: "/v1/import", target: "/v1/import", body: #"{"batch":[{"type":"track","userId":"u-ok","event":"I"}]}"#),
                Call(method: "GET", pattern: "/livez", target: "/livez"), Call(method: "GET", pattern: "/readyz", target: "/readyz"),
                Call(method: "GET", pattern: "/healthz", target: "/healthz"),
                Call(method: "GET", pattern: "/metrics", target: "/metrics", role: .admin),
                Call(method: "GET", pattern: p, target: profile + read, role: .reader),
                Call(method: "GET", pattern: p + "/traits", target: profile + "/traits" + read, role: .reader),
                Call(method: "GET", pattern: p + "/identifiers", target: profile + "/identifiers" + read, role: .reader),
                Call(method: "GET", pattern: p + "/events", target: profile + "/events" + read, role: .reader),
                Call(method: "GET", pattern: p + "/consent", target: profile + "/consent", role: .reader),
                Call(
                    method: "PUT", pattern: p + "/consent", target: profile + "/consent", role: .privacy,
                    body: #"{"categoryPreferences":{"analytics":true}}"#),
                Call(method: "POST", pattern: p + "/restrict", target: profile + "/restrict", role: .privacy),
                Call(method: "DELETE", pattern: p + "/restrict", target: profile + "/restrict", role: .privacy),
                Call(method: "GET", pattern: p + "/export", target: profile + "/export", role: .privacy),
                Call(method: "GET", pattern: p + "/audit", target: profile + "/audit", role: .privacy),
                Call(method: "GET", pattern: p + "/links", target: profile + "/links", role: .admin),
                Call(method: "GET", pattern: "/v1/groups/{groupId}", target: "/v1/groups/g-1?purpose=support", role: .reader),
                Call(method: "GET", pattern: "/v1/changes", target: "/v1/changes?purpose=support&since=0", role: .reader),
                Call(
                    method: "PUT", pattern: "/v1/subscriptions/{name}", target: "/v1/subscriptions/crm", role: .admin,
                    body: #"{"url":"http://127.0.0.1:9/hook","purpose":"support"}"#, status: 201),
                Call(method: "GET", pattern: "/v1/subscriptions", target: "/v1/subscriptions", role: .admin),
                Call(method: "GET", pattern: "/v1/subscriptions/{name}", target: "/v1/subscriptions/crm", role: .admin),
                Call(method: "POST", pattern: "/v1/subscriptions/{name}/replay", target: "/v1/subscriptions/crm/replay", role: .admin, status: 202),
                Call(method: "DELETE", pattern: "/v1/subscriptions/{name}", target: "/v1/subscriptions/crm", role: .admin),
                Call(method: "GET", pattern: "/v1/admin/status", target: "/v1/admin/status", role: .admin),
                Call(method: "GET", pattern: "/v1/admin/export", target: "/v1/admin/export?purpose=support", role: .admin),
                Call(method: "GET", pattern: "/v1/admin/consent-names", target: "/v1/admin/consent-names", role: .privacy),
                // A store in memory has no file to copy; the copy itself is tested against LMDB
                // in a real process (KithProcessTests).
                Call(
                    method: "POST", pattern: "/v1/admin/backup", target: "/v1/admin/backup", role: .admin, body: #"{"directory":"/tmp/none"}"#,
                    status: 409),
                Call(method: "POST", pattern: "/v1/admin/compact", target: "/v1/admin/compact", role: .admin, status: 409),
                Call(method: "GET", pattern: "/v1/admin/members", target: "/v1/admin/members", role: .admin),
                Call(method: "GET", pattern: "/v1/admin/sync", target: "/v1/admin/sync", role: .admin),
                Call(method: "POST", pattern: "/v1/admin/repair", target: "/v1/admin/repair", role: .admin, body: #"{"peer":"peer-2"}"#, status: 202),
                Call(
                    method: "POST", pattern: "/v1/admin/join", target: "/v1/admin/join", role: .admin, body: #"{"address":"127.0.0.1:9"}"#,
                    status: 202),
                Call(method: "POST", pattern: "/v1/admin/leave", target: "/v1/admin/leave", role: .admin, status: 202),
                Call(method: "DELETE", pattern: p + "/links/{other}", target: profile + "/links/anonymous_id:a-ok", role: .admin),
                Call(method: "DELETE", pattern: p, target: profile, role: .privacy),
            ]
    }

    @Test func everyRouteHasASuccessfulCall() {
        let table = Set(NodeAPI.routes.routes.map { "\($0.method) \($0.pattern)" })
        let called = Set(Self.calls.map { "\($0.method) \($0.pattern)" })
        #expect(table == called, "no successful call for \(table.subtracting(called).sorted()); unknown \(called.subtracting(table).sorted())")
    }

    @Test func everyRouteSucceeds() throws {
        let test = try TestAPI(replicated: true)
        try test.replication!.meet("peer-2", id: 2)
        for call in Self.calls {
            let answer =
                call.role == nil && call.method == "POST"
                ? test.ingest(call.target, call.body) : test.call(call.method, call.target, role: call.role, body: call.body, firingTimers: true)
            #expect(answer?.status == call.status, "\(call.method) \(call.target): \(answer?.status ?? 0) \(answer?.text ?? "no answer")")
        }
    }
}
