import Foundation
import KithCluster
import KithHTTP
import KithJSON
import KithNet
import KithPolicy
import KithReplication

extension Node {
    /// The cluster's admin endpoints: members, join, leave, repair, sync status.
    func clusterRoute(_ request: HTTPRequest, respond: @escaping @Sendable (HTTPResponse) -> Void) {
        // The member list (no personal data) also serves the privacy role's cluster-wide audit.
        let roles: Set<Role> = request.method == "GET" && request.path == "/v1/admin/members" ? [.admin, .privacy] : [.admin]
        guard authorized(request, roles, respond) != nil else { return }
        guard let replication else {
            return respond(.error(409, code: "not_clustered", message: "this node runs alone: start it with --gossip to replicate"))
        }
        let body = (try? JSONParser.parse(request.body)) ?? .object(JSONObject())
        do {
            switch request.path {
            case "/v1/admin/members":
                let (members, me) = try replication.perform { node in (node.membership.all, node.membership.me.id) }
                let clock = replication.clock.withLock { $0 }
                let peers = Dictionary(clock.peers.map { ($0.clock.peer, $0.clock) }, uniquingKeysWith: { a, _ in a })
                respond(.json(200, Self.jsonBody(["members": .array(members.map { member in
                    Self.json(member, clock: member.id == me ? clock.check : nil, peerClock: peers[member.id])
                })])))
            case "/v1/admin/join":
                guard let address = body["address"]?.stringValue, address.contains(":") else {
                    return respond(.error(400, code: "invalid_request", message: "send {\"address\": \"host:port\"}"))
                }
                try replication.perform { node in node.join(address) }
                respond(.json(202, Self.jsonBody(["joining": .string(address)])))
            case "/v1/admin/leave":
                try replication.perform { node in node.leave() }
                respond(.json(202, Self.jsonBody(["left": .bool(true)])))
            case "/v1/admin/repair":
                let wanted = body["peer"]?.stringValue
                let started = try replication.perform { node -> [String] in
                    let now = monotonicMillis()
                    let peers = node.membership.reachable.filter { wanted == nil || $0.name == wanted }
                    for peer in peers { try node.pull(from: peer, now: now) }
                    // Then compare digest trees with each: repairs what no log holds any more.
                    node.requestTreeComparisons(with: peers.map(\.id))
                    return peers.map(\.name)
                }
                guard !started.isEmpty else {
                    return respond(.error(404, code: "no_such_peer", message: wanted.map { "no reachable peer named \($0)" } ?? "no reachable peer"))
                }
                respond(.json(202, Self.jsonBody(["repairing": .array(started.map { .string($0) })])))
            default:
                respond(.json(200, Self.jsonBody(try syncStatus(replication))))
            }
        } catch {
            respond(.error(503, code: "unavailable", message: "\(error)"))
        }
    }

    /// Per peer: last contact, and how far behind this node it is (by its last pull).
    private func syncStatus(_ replication: ReplicationService) throws -> JSONValue {
        let metrics = replication.transport.metrics
        let (peers, mine, lags, counters, pending, compared) = try replication.perform { node in
            let peers = node.peerStates
            return (
                peers, try node.store.versionVector(), try peers.map { try node.lag(of: $0.member.id) }, node.counters,
                node.pendingTreeComparisons, peers.map { node.lastTreeComparison(with: $0.member.id) }
            )
        }
        let now = monotonicMillis()
        func number(_ value: Int) -> JSONValue { .number(JSONNumber(Int64(value))) }
        return [
            "antiEntropy": [
                "pending": number(pending), "completed": number(counters.antiEntropyCompleted),
                "abandoned": number(counters.antiEntropyAbandoned), "documentsSent": number(counters.documentsSent),
                "documentsReceived": number(counters.documentsReceived), "documentsRepaired": number(counters.documentsRepaired),
            ],
            "versions": .string(mine.description),
            "framesSent": .number(JSONNumber(Int64(metrics.framesSent.load(ordering: .relaxed)))),
            "framesReceived": .number(JSONNumber(Int64(metrics.framesReceived.load(ordering: .relaxed)))),
            "bytesSent": .number(JSONNumber(Int64(metrics.bytesSent.load(ordering: .relaxed)))),
            "bytesReceived": .number(JSONNumber(Int64(metrics.bytesReceived.load(ordering: .relaxed)))),
            "peers": .array(zip(zip(peers, lags), compared).map { pair, compared in
                let ((member, state), lag) = pair
                var object: [String: JSONValue] = ["name": .string(member.name), "status": .string(member.status.description)]
                if let contact = state.lastContact { object["lastContactMsAgo"] = .number(JSONNumber(now - contact)) }
                if let compared { object["lastTreeComparisonMsAgo"] = .number(JSONNumber(now - compared)) }
                if let lag {
                    object["lagMessages"] = .number(JSONNumber(Int64(lag.changes)))
                    object["lagBytes"] = .number(JSONNumber(Int64(lag.bytes)))
                }
                return .object(JSONObject(object.keys.sorted().map { JSONObject.Member($0, object[$0]!) }))
            }),
        ]
    }

    /// A member as `kith members` shows it. `clock`: this node's own check (its offset from the
    /// cluster and whether it takes writes); `peerClock`: a peer's offset from this node.
    static func json(_ member: Member, clock: ClockCheck? = nil, peerClock: PeerClock? = nil) -> JSONValue {
        let base: JSONValue = [
            "name": .string(member.name), "address": .string(member.address), "api": .string(member.api),
            "role": .string(member.role.description),
            "status": .string(member.role == .edge && member.status == .dead ? "away" : member.status.description),
            "incarnation": .number(JSONNumber(Int64(truncatingIfNeeded: member.incarnation))),
        ]
        guard var object = base.objectValue else { preconditionFailure("a member is a JSON object") }
        if let clock {
            object.members.append(JSONObject.Member("self", .bool(true)))
            if let offset = clock.offset { object.members.append(JSONObject.Member("clockOffsetMs", .number(JSONNumber(offset)))) }
            object.members.append(JSONObject.Member("clock", .string(clock.verdict.rawValue)))
        }
        if let peerClock {
            // The peer's clock minus this node's, as this node measured it.
            object.members.append(JSONObject.Member("clockOffsetMs", .number(JSONNumber(peerClock.offset))))
            object.members.append(JSONObject.Member("clockUncertaintyMs", .number(JSONNumber(peerClock.uncertainty))))
        }
        return .object(object)
    }
}

extension Node {
    static func jsonBody(_ value: JSONValue) -> [UInt8] {
        var writer = JSONWriter()
        writer.write(value)
        return writer.bytes
    }
}
