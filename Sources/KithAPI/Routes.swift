import KithHTTP
import KithPolicy
import KithProfile

/// Who may call a route.
enum Access: Sendable, Equatable {
    case anyone
    /// Segment's write key, which may also come in the body (`writeKey`), checked by the ingest
    /// handler: its refusals take Segment's error shape.
    case writeKey
    /// A bearer token whose principal has one of these roles: 401 without one, 403 with another.
    case roles(Set<Role>)
}

/// A route of the node's API: who may call it, and what answers it.
struct NodeRoute: Sendable {
    typealias Handler = @Sendable (NodeAPI, RouteCall) -> Void
    let access: Access
    let handler: Handler
}

/// One call of a route, as its handler gets it: the request, the path's parameters, the
/// caller (for `.roles` routes), and where the answer goes.
struct RouteCall: Sendable {
    let request: HTTPRequest
    let parameters: RouteTable<NodeRoute>.Parameters
    let principal: Principal?
    let respond: @Sendable (HTTPResponse) -> Void

    /// The caller of a `.roles` route (the table checked it before the handler runs).
    var caller: Principal {
        guard let principal else { preconditionFailure("a handler of a route without roles asked for its caller") }
        return principal
    }
}

extension NodeAPI {
    static let readers: Set<Role> = [.reader, .admin, .privacy]

    /// Every route of the node's HTTP API (docs/http-api.md). 404, 405 and the role checks
    /// (401, 403) are decided from this table alone, before any handler runs.
    static let routes = RouteTable<NodeRoute>(
        [
            .init("GET", "/livez", NodeRoute(access: .anyone) { _, call in call.respond(.json(200, Array(#"{"status":"ok"}"#.utf8))) }),
            .init("GET", "/readyz", NodeRoute(access: .anyone) { node, call in node.ready(respond: call.respond) }),
            .init(
                "GET", "/healthz",
                NodeRoute(access: .anyone) { node, call in
                    call.respond(.json(200, Array(#"{"status":"ok","node":"\#(node.settings.nodeName)","version":"\#(NodeAPI.version)"}"#.utf8)))
                }),
            .init("GET", "/metrics", NodeRoute(access: .roles([.admin])) { node, call in node.metrics(respond: call.respond) }),
            .init("POST", "/v1/batch", NodeRoute(access: .writeKey) { node, call in node.ingest(call.request, kind: nil, respond: call.respond) }),
            .init("POST", "/v1/import", NodeRoute(access: .writeKey) { node, call in node.ingest(call.request, kind: nil, respond: call.respond) }),
        ]
            + MessageType.allCases.map { kind in
                .init(
                    "POST", "/v1/\(kind.rawValue)",
                    NodeRoute(access: .writeKey) { node, call in node.ingest(call.request, kind: kind, respond: call.respond) })
            }
            + profileRoutes
            + [
                .init("GET", "/v1/changes", NodeRoute(access: .roles(readers)) { api, call in api.changes(call) }),
                .init("GET", "/v1/subscriptions", NodeRoute(access: .roles([.admin])) { api, call in api.listSubscriptions(call) }),
                .init("PUT", "/v1/subscriptions/{name}", NodeRoute(access: .roles([.admin])) { api, call in api.putSubscription(call) }),
                .init("GET", "/v1/subscriptions/{name}", NodeRoute(access: .roles([.admin])) { api, call in api.getSubscription(call) }),
                .init("DELETE", "/v1/subscriptions/{name}", NodeRoute(access: .roles([.admin])) { api, call in api.deleteSubscription(call) }),
                .init("POST", "/v1/subscriptions/{name}/replay", NodeRoute(access: .roles([.admin])) { api, call in api.replaySubscription(call) }),
                .init(
                    "GET", "/v1/groups/{groupId}",
                    NodeRoute(access: .roles(readers)) { api, call in api.groupRoute(call) }),
            ]
            + [
                .init(
                    "GET", "/v1/admin/status",
                    NodeRoute(access: .roles([.admin])) { node, call in
                        // Its counts include every write acknowledged before it, as a read's data does.
                        node.afterAcknowledgedWrites(respond: call.respond) { respond in node.adminStatus(call.request, respond: respond) }
                    }),
                .init(
                    "POST", "/v1/admin/backup",
                    NodeRoute(access: .roles([.admin])) { node, call in node.adminBackup(call.request, respond: call.respond) }),
                .init(
                    "POST", "/v1/admin/compact",
                    NodeRoute(access: .roles([.admin])) { node, call in node.adminCompact(call.request, respond: call.respond) }),
                .init(
                    "GET", "/v1/admin/export",
                    NodeRoute(access: .roles([.admin])) { node, call in node.adminExport(call) }),
                .init(
                    "GET", "/v1/admin/consent-names",
                    NodeRoute(access: .roles([.admin, .privacy])) { node, call in node.adminConsentNames(call) }),
                // The member list (no personal data) also serves the privacy role's cluster-wide audit.
                .init("GET", "/v1/admin/members", NodeRoute(access: .roles([.admin, .privacy])) { node, call in node.clusterRoute(call) }),
                .init("POST", "/v1/admin/join", NodeRoute(access: .roles([.admin])) { node, call in node.clusterRoute(call) }),
                .init("POST", "/v1/admin/leave", NodeRoute(access: .roles([.admin])) { node, call in node.clusterRoute(call) }),
                .init("POST", "/v1/admin/repair", NodeRoute(access: .roles([.admin])) { node, call in node.clusterRoute(call) }),
                .init("GET", "/v1/admin/sync", NodeRoute(access: .roles([.admin])) { node, call in node.clusterRoute(call) }),
            ])

    /// The profile resources: `/v1/profiles/{identifier}` and what hangs under it.
    private static var profileRoutes: [RouteTable<NodeRoute>.Route] {
        func route(_ method: String, _ pattern: String, _ roles: Set<Role>, _ action: ProfileAction) -> RouteTable<NodeRoute>.Route {
            .init(method, "/v1/profiles/{identifier}" + pattern, NodeRoute(access: .roles(roles)) { node, call in node.profileRoute(call, action) })
        }
        return [
            route("GET", "", readers, .read(resource: "")), route("DELETE", "", [.privacy], .erase),
            route("GET", "/traits", readers, .read(resource: "traits")), route("GET", "/identifiers", readers, .read(resource: "identifiers")),
            route("GET", "/events", readers, .read(resource: "events")),
            route("GET", "/consent", readers, .consent), route("PUT", "/consent", [.privacy], .setConsent),
            route("POST", "/restrict", [.privacy], .restrict(true)), route("DELETE", "/restrict", [.privacy], .restrict(false)),
            route("GET", "/export", [.privacy], .export), route("GET", "/audit", [.privacy], .audit),
            route("GET", "/links", [.admin, .privacy], .links), route("DELETE", "/links/{other}", [.admin, .privacy], .unlink),
        ]
    }

    /// The name of a matched route in metrics and logs: its pattern, never a path with
    /// identifiers in it.
    static func routeName(_ match: RouteTable<NodeRoute>.Match) -> String {
        switch match {
        case .notFound: "other"
        case .methodNotAllowed(_, let pattern): pattern.description
        case .found(let route, _): route.pattern.description
        }
    }

    /// Answers a request through its match in the table: 404, 405 (with `Allow`), then the
    /// route's access (401, 403), then its handler.
    func route(_ request: HTTPRequest, _ match: RouteTable<NodeRoute>.Match, respond: @escaping @Sendable (HTTPResponse) -> Void) {
        switch match {
        case .notFound: respond(.error(404, code: "not_found", message: "no such endpoint"))
        case .methodNotAllowed(let allowed, _):
            var response = HTTPResponse.error(405, code: "method_not_allowed", message: "use \(allowed.joined(separator: " or "))")
            response.headers.append(HTTPHeader("Allow", allowed.joined(separator: ", ")))
            respond(response)
        case .found(let route, let parameters):
            var principal: Principal?
            if case .roles(let roles) = route.value.access {
                guard let caller = authorized(request, roles, respond) else { return }
                principal = caller
            }
            route.value.handler(self, RouteCall(request: request, parameters: parameters, principal: principal, respond: respond))
        }
    }

    /// `/readyz`: 503 while stopping or while the clock is out of bound or unmeasured.
    func ready(respond: @Sendable (HTTPResponse) -> Void) {
        if stopping.load(ordering: .relaxed) { return respond(.error(503, code: "stopping", message: "the node is shutting down")) }
        respond(clockRefusal() ?? .json(200, Array(#"{"status":"ready"}"#.utf8)))
    }
}
