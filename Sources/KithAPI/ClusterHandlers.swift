import KithCRDT
import KithCluster
import KithHTTP
import KithJSON
import KithPolicy
import KithReplication
import KithStore

extension NodeAPI {
    /// The cluster's admin endpoints: members, join, leave, repair, sync status.
    func clusterRoute(_ call: RouteCall) {
        let (request, respond) = (call.request, call.respond)
        guard let replication else {
            return respond(.error(409, code: "not_clustered", message: "this node runs alone: start it with --gossip to replicate"))
        }
        // A body that is not JSON reads as no options (each route says what it needs).
        let body = (try? JSONParser.parse(request.body)) ?? .object(JSONObject())
        /// Runs `work` on the replication thread and answers with `render` of its result.
        func answer<T: Sendable>(_ work: @escaping (ClusterNode) throws -> T, _ render: @escaping @Sendable (T) -> HTTPResponse) {
            replication.call(work) { result in
                switch result {
                case .success(let value): respond(render(value))
                case .failure(let error): respond(.error(503, code: "unavailable", message: "\(error)"))
                }
            }
        }
        switch request.path {
        case "/v1/admin/members":
            answer({ node in (node.membership.all, node.membership.me.id) }) { [replication] members, me in
                let clock = replication.clock
                let peers = Dictionary(clock.peers.map { ($0.clock.peer, $0.clock) }, uniquingKeysWith: { a, _ in a })
                return .json(
                    200,
                    Self.jsonBody([
                        "members": .array(
                            members.map { member in
                                Self.json(member, clock: member.id == me ? clock.check : nil, peerClock: peers[member.id])
                            })
                    ]))
            }
        case "/v1/admin/join":
            guard let address = body["address"]?.stringValue, address.contains(":") else {
                return respond(.error(400, code: "invalid_request", message: "send {\"address\": \"host:port\"}"))
            }
            answer({ node in node.join(address) }) { _ in .json(202, Self.jsonBody(["joining": .string(address)])) }
        case "/v1/admin/leave":
            answer({ node in node.leave() }) { _ in .json(202, Self.jsonBody(["left": .bool(true)])) }
        case "/v1/admin/repair":
            let wanted = body["peer"]?.stringValue
            answer({ [host] node -> [String] in
                let now = host.monotonicMillis()
                let peers = node.membership.reachable.filter { wanted == nil || $0.name == wanted }
                for peer in peers { try node.pull(from: peer, now: now) }
                // Then compare digest trees with each: repairs what no log holds any more.
                node.requestTreeComparisons(with: peers.map(\.id))
                return peers.map(\.name)
            }) { started in
                guard !started.isEmpty else {
                    return .error(404, code: "no_such_peer", message: wanted.map { "no reachable peer named \($0)" } ?? "no reachable peer")
                }
                return .json(202, Self.jsonBody(["repairing": .array(started.map { .string($0) })]))
            }
        default:
            answer(SyncProgress.init) { [replication, host, store] progress in
                var status = Self.syncStatus(progress, replication.links, now: host.monotonicMillis())
                if let site = progress.site, var object = status.objectValue {
                    object.members.append(
                        JSONObject.Member("site", Self.siteStatus(site.settings, site.holds, progress.counters, fileBytes: store.fileBytes)))
                    status = .object(object)
                }
                return .json(200, Self.jsonBody(status))
            }
        }
    }

    /// What `kith sync status` shows of the replication core, read on its thread.
    struct SyncProgress: Sendable {
        var peers: [(member: Member, state: ClusterNode.PeerState)]
        var versions: VersionVector
        var lags: [(changes: Int, bytes: Int)?]
        var counters: ClusterNode.Counters
        var pending: Int
        var compared: [Int64?]
        var log: LogExtent
        var truncation: LogTruncationPlan?
        var forgetCompaction: ForgetCompactionState
        /// The last forget-compaction plan: the members it waited on.
        var forgetPlan: ForgetCompactionPlan?
        /// Peers this node takes no data from until they drop their old data (forget compaction).
        var quarantined: Set<UInt64>
        /// On a scoped site: its settings, and the profiles and documents it holds (a scan of
        /// what it holds: a site holds its scope only).
        var site: (settings: SiteSettings, holds: StoreStatistics)?

        init(_ node: ClusterNode) throws {
            peers = node.peerStates
            versions = try node.store.versionVector()
            lags = try peers.map { try node.lag(of: $0.member.id) }
            counters = node.counters
            pending = node.pendingTreeComparisons
            compared = peers.map { node.lastTreeComparison(with: $0.member.id) }
            log = try node.store.logExtent()
            truncation = node.logTruncationPlan
            forgetCompaction = try node.store.forgetCompactionState()
            forgetPlan = node.forgetCompactionPlan
            quarantined = Set(try peers.filter { try !node.takesData(from: $0.member.id) }.map(\.member.id))
            if let settings = node.settings.site, let store = node.store as? any ProfileReading {
                site = (settings, try store.statistics())
            }
        }
    }

    /// Per peer: last contact, and how far behind this node it is (by its last pull). `now`: the
    /// monotonic clock the replication core dates contacts by.
    private static func syncStatus(_ progress: SyncProgress, _ links: PeerLinkTotals, now: Int64) -> JSONValue {
        let counters = progress.counters
        func number(_ value: Int) -> JSONValue { .number(JSONNumber(Int64(value))) }
        return [
            "antiEntropy": [
                "pending": number(progress.pending), "completed": number(counters.antiEntropyCompleted),
                "abandoned": number(counters.antiEntropyAbandoned), "documentsSent": number(counters.documentsSent),
                "documentsReceived": number(counters.documentsReceived), "documentsRepaired": number(counters.documentsRepaired),
            ],
            "versions": .string(progress.versions.description),
            "changeLog": [
                "truncatedThrough": .number(JSONNumber(Int64(clamping: progress.log.truncatedThrough))),
                "last": .number(JSONNumber(Int64(clamping: progress.log.last))),
                "span": .number(JSONNumber(Int64(clamping: progress.log.span))),
                "recordsTruncated": number(counters.logRecordsTruncated), "resyncsCompleted": number(counters.resyncsCompleted),
            ],
            "forgetSet": forgetSetStatus(progress),
            "framesSent": number(links.framesSent), "framesReceived": number(links.framesReceived),
            "bytesSent": number(links.bytesSent), "bytesReceived": number(links.bytesReceived),
            "peers": .array(
                zip(zip(progress.peers, progress.lags), progress.compared).map { pair, compared in
                    let ((member, state), lag) = pair
                    var object: [String: JSONValue] = ["name": .string(member.name), "status": .string(member.status.description)]
                    if member.scoped { object["scoped"] = .bool(true) }
                    if let contact = state.lastContact { object["lastContactMsAgo"] = .number(JSONNumber(now - contact)) }
                    if let compared { object["lastTreeComparisonMsAgo"] = .number(JSONNumber(now - compared)) }
                    if let lag {
                        object["lagMessages"] = .number(JSONNumber(Int64(lag.changes)))
                        object["lagBytes"] = .number(JSONNumber(Int64(lag.bytes)))
                    }
                    // How far it has read this node's log, and whether truncation waits for it.
                    if let reader = progress.truncation?.readers.first(where: { $0.id == member.id }) {
                        if let read = reader.readThrough { object["readThrough"] = .number(JSONNumber(Int64(clamping: read))) }
                        object["holdsLogBack"] = .bool(reader.holdsBack)
                    }
                    if let past = state.truncatedPast { object["behindTruncatedLogThrough"] = .number(JSONNumber(Int64(clamping: past))) }
                    if progress.quarantined.contains(member.id) { object["quarantined"] = .bool(true) }
                    // Whether forget compaction waits for it (it has not said what it holds; a
                    // scoped site: its log not read within the window), and when its log was last
                    // read through.
                    if progress.forgetPlan?.waitingOn.contains(member.id) == true { object["holdsForgetRecordsBack"] = .bool(true) }
                    if let read = state.logReadAsOf { object["logReadMsAgo"] = .number(JSONNumber(now - read)) }
                    return .object(JSONObject(object.keys.sorted().map { JSONObject.Member($0, object[$0]!) }))
                }),
        ]
    }

    /// A scoped site: what it serves and holds (customers in scope, documents, the data file's
    /// bytes), and what its syncs with the core did.
    private static func siteStatus(_ settings: SiteSettings, _ holds: StoreStatistics, _ counters: ClusterNode.Counters, fileBytes: Int)
        -> JSONValue
    {
        func number(_ value: Int) -> JSONValue { .number(JSONNumber(Int64(value))) }
        return [
            "purposes": .array(settings.purposes.map { .string($0) }), "customers": number(holds.profiles), "documents": number(holds.sources),
            "dataFileBytes": number(fileBytes), "syncsCompleted": number(counters.siteSyncsCompleted),
            "syncsAbandoned": number(counters.siteSyncsAbandoned), "documentsJoined": number(counters.siteDocumentsJoined),
            "documentsPurged": number(counters.sitePurged), "documentsReplaced": number(counters.siteReplaced),
            "updatesFailed": number(counters.siteUpdatesFailed),
        ]
    }

    /// Forget compaction: how far this node dropped forget records, how far it dropped its own
    /// old data when a peer quarantined it, and what those did.
    private static func forgetSetStatus(_ progress: SyncProgress) -> JSONValue {
        let counters = progress.counters, state = progress.forgetCompaction
        var object: [String: JSONValue] = [
            "recordsCompacted": .number(JSONNumber(Int64(counters.forgetRecordsCompacted))),
            "quarantinedMessagesRefused": .number(JSONNumber(Int64(counters.quarantinedMessagesRefused))),
            "quarantinesCleared": .number(JSONNumber(Int64(counters.quarantinesCleared))),
        ]
        if let through = state.compactedThrough { object["compactedThrough"] = .number(JSONNumber(through)) }
        if let cleared = state.clearedThrough { object["clearedThrough"] = .number(JSONNumber(cleared)) }
        return .object(JSONObject(object.keys.sorted().map { JSONObject.Member($0, object[$0]!) }))
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

extension NodeAPI {
    static func jsonBody(_ value: JSONValue) -> [UInt8] {
        var writer = JSONWriter()
        writer.write(value)
        return writer.bytes
    }
}
