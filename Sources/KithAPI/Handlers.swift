// Foundation for base64 in the write key check, and nothing else: the API has no sockets or threads.
import Foundation
import KithCRDT
import KithCluster
import KithCompression
import KithCrypto
import KithHTTP
import KithJSON
import KithPolicy
import KithProfile
import KithStore

extension NodeAPI {
    /// Segment's HTTP Tracking API: one message, or a batch; all of it is applied or none.
    func ingest(_ request: HTTPRequest, kind: MessageType?, respond: @escaping @Sendable (HTTPResponse) -> Void) {
        func refuse(_ status: Int, _ code: String, _ message: String) {
            respond(.json(status, Self.segmentError(code, message)))
        }
        var body = request.body
        if let encoding = request.header("content-encoding"), HTTPHeader.equalIgnoringASCIICase(encoding, "gzip") {
            do { body = try Gzip.decompress(body, limit: Self.maximumBatchBytes) } catch {
                return refuse(400, error.code == .tooLarge ? "payload_too_large" : "invalid_gzip", "the gzip body is \(error.code.rawValue)")
            }
        }
        guard body.count <= Self.maximumBatchBytes else { return refuse(400, "payload_too_large", "a request body may be at most 500 KB") }
        guard let concern = request.queryItems["w"].map(WriteConcern.init(rawValue:)) ?? .one else {
            return refuse(400, "invalid_query", "w must be 1, quorum or all")
        }
        guard let session = presentedSession(request) else {
            return refuse(400, "invalid_session", "the \(SessionToken.header) header is not a token this API returned")
        }
        let json: JSONValue
        do { json = try JSONParser.parse(body) } catch { return refuse(400, "invalid_json", "\(error)") }
        guard authorizedWriteKey(request, json) else { return refuse(401, "invalid_write_key", "a valid write key is required") }
        // Messages are dated by this node's clock (no later than their receipt): not while it is untrusted.
        if let refusal = clockRefusal(segment: true) { return respond(refusal) }

        let messages: [JSONValue]
        if kind != nil {
            messages = [json]
        } else {
            guard case .array(let batch)? = json["batch"] else { return refuse(400, "invalid_request", "a batch needs a \"batch\" array") }
            guard batch.count <= Self.maximumBatchMessages else { return refuse(400, "payload_too_large", "a batch may hold at most 2500 messages") }
            // Segment: a batch's top-level context applies to every call in it (a message's own
            // context keys take precedence).
            if case .object(let shared)? = json["context"] {
                messages = batch.map { Self.withContext(shared, $0) }
            } else {
                messages = batch
            }
        }
        let receivedAt = host.wallMillis()
        var deltas: [ProfileDelta] = []
        deltas.reserveCapacity(messages.count)
        for (index, message) in messages.enumerated() {
            // A body within the message limit cannot hold a message over it: only larger bodies
            // pay for measuring each message.
            guard body.count <= Self.maximumMessageBytes || RawJSON(message).bytes.count <= Self.maximumMessageBytes else {
                return refuse(400, "payload_too_large", "message \(index) is larger than 32 KB")
            }
            do {
                let delta = try parser.parse(message, defaultType: kind, receivedAt: receivedAt)
                deltas.append(delta)
                // A group call also writes the group's own document.
                if let group = try parser.groupDelta(message, for: delta) { deltas.append(group) }
            } catch {
                return refuse(400, error.code.rawValue, (messages.count > 1 ? "message \(index): " : "") + error.message)
            }
        }
        guard writer.backlog < settings.ingestQueueLimit else {
            var response = HTTPResponse.json(429, Self.segmentError("too_many_requests", "the node is shedding load; retry"))
            response.headers.append(HTTPHeader("Retry-After", "1"))
            return respond(response)
        }
        metrics.receivedMessages.wrappingAdd(deltas.count, ordering: .relaxed)
        writer.submit(deltas) { [self] result in
            let respond = withSessionToken(session, ownSequence: try? result.get().ownSequence, respond)  // failed: no sequence to add
            switch result {
            case .success where concern == .one: respond(.json(200, Array(#"{"success":true}"#.utf8)))
            case .success(let committed): awaitReplicas(concern, through: committed.ownSequence, respond: respond)
            case .failure(let error):
                respond(.json(503, Self.segmentError("unavailable", "the messages were not stored: \(error)")))
            }
        }
    }

    /// The session token a request presents: empty when it presents none, nil when it is not one of ours.
    func presentedSession(_ request: HTTPRequest) -> VersionVector? {
        guard let text = request.header(SessionToken.header) else { return VersionVector() }
        return SessionToken.parse(text)
    }

    /// After a write committed here: `respond`, with the session token raised to this node's
    /// own changes through `ownSequence` (the commit's, which include the write), so that a
    /// read anywhere can ask for them.
    func withSessionToken(_ presented: VersionVector, ownSequence: UInt64?, _ respond: @escaping @Sendable (HTTPResponse) -> Void)
        -> @Sendable (HTTPResponse) -> Void
    {
        var token = presented
        if let ownSequence { token.advance(origin: origin, to: ownSequence) }
        let text = SessionToken.text(token)
        return { response in
            var response = response
            if response.status == 200 || response.status == 503 { response.headers.append(HTTPHeader(SessionToken.header, text)) }
            respond(response)
        }
    }

    /// How long a write with `w=quorum` or `w=all` waits for other replicas.
    static let replicaWaitMillis: Int64 = 5_000

    /// 503 `insufficient_replicas`: too few replicas held a write (`counted` names them
    /// `acknowledged`) or answered a read (`answered`) in time.
    static func insufficientReplicas(_ message: String, counted: (name: String, count: Int), required: Int) -> HTTPResponse {
        .json(
            503,
            object { o in
                o.member("code", string: "insufficient_replicas")
                o.member("message", string: message)
                o.member(counted.name, integer: Int64(counted.count))
                o.member("required", integer: Int64(required))
            })
    }

    /// After a durable commit here: waits until as many replicas as `concern` asks hold this
    /// node's changes so far (this request's among them), then answers how many do.
    private func awaitReplicas(_ concern: WriteConcern, through: UInt64?, respond: @escaping @Sendable (HTTPResponse) -> Void) {
        let answer: @Sendable (Int, Int, Bool) -> Void = { held, required, met in
            guard met else {
                return respond(
                    Self.insufficientReplicas(
                        "stored durably on \(held) of the \(required) replicas w=\(concern.rawValue) needs within \(Self.replicaWaitMillis / 1000) s; "
                            + "the write stays applied where it landed and reaches the other replicas as they come back",
                        counted: ("acknowledged", held), required: required))
            }
            respond(
                .json(
                    200,
                    Self.object { o in
                        o.member("success") { $0.write(.bool(true)) }
                        o.member("replicas", integer: Int64(held))
                    }))
        }
        // A node without peers is every replica there is.
        guard let replication else { return answer(1, 1, true) }
        guard let through else {
            return respond(.json(503, Self.segmentError("unavailable", "the write is stored here, but its replicas could not be counted; retry")))
        }
        replication.awaitReplicas(ownThrough: through, concern: concern, timeoutMillis: Self.replicaWaitMillis, completion: answer)
    }

    static func withContext(_ shared: JSONObject, _ message: JSONValue) -> JSONValue {
        guard case .object(var object) = message else { return message }
        var context = shared
        if case .object(let own)? = object["context"] {
            for member in own.members {
                context.members.removeAll { $0.key == member.key }
                context.members.append(member)
            }
        }
        object.members.removeAll { $0.key == "context" }
        object.members.append(JSONObject.Member("context", .object(context)))
        return .object(object)
    }

    /// The write key as the basic-auth user name (empty password), or `writeKey` in the body.
    private func authorizedWriteKey(_ request: HTTPRequest, _ json: JSONValue) -> Bool {
        var candidate: [UInt8]?
        if let authorization = request.header("authorization"), let credentials = Self.basicCredentials(authorization) {
            candidate = Array(credentials.prefix { $0 != UInt8(ascii: ":") })
        } else if let key = json["writeKey"]?.stringValue {
            candidate = Array(key.utf8)
        }
        guard let candidate, !candidate.isEmpty else { return false }
        // Compare against every key in constant time, so timing reveals nothing about them.
        return writeKeys.reduce(false) { found, key in Crypto.constantTimeEquals(key, candidate) || found }
    }

    /// The decoded credentials of a `Basic` authorization (the scheme in any case), or nil.
    /// Works on the header's bytes: every ingest request carries one, and the String and
    /// CharacterSet route cost a tenth of an event loop's time under single identifies.
    static func basicCredentials(_ authorization: String) -> Data? {
        var bytes = authorization.utf8[...]
        let scheme = Array("basic ".utf8)
        guard bytes.count > scheme.count, zip(bytes, scheme).allSatisfy({ ASCIIFolding.fold($0) == $1 }) else { return nil }
        bytes = bytes.dropFirst(scheme.count)
        let blank: (UInt8) -> Bool = { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
        while let first = bytes.first, blank(first) { bytes = bytes.dropFirst() }
        while let last = bytes.last, blank(last) { bytes = bytes.dropLast() }
        return Data(base64Encoded: Data(bytes))
    }

    static let invalidIdentifier = HTTPResponse.error(
        400, code: "invalid_identifier",
        message: "identifiers look like user_id:u-1, anonymous_id:a-9, email:a@example.com or phone:+442079460000 (percent-encoded as needed)")

    /// The identifier a path segment or query value names (percent-decoded), or the answer
    /// refusing it: an unknown kind is told the kinds there are; a national phone number is read
    /// in the configured region.
    func identifier(_ segment: Substring?) -> Result<Identifier, IdentifierRefusal> {
        guard let segment, let text = HTTPRequest.percentDecoded(segment), let (name, value) = text.splitAtFirstColon() else {
            return .failure(IdentifierRefusal(response: Self.invalidIdentifier))
        }
        let sources = settings.identifierSources
        guard let kind = IdentifierKind(name: name), kind == .groupId || sources.knows(kind) else {
            return .failure(
                IdentifierRefusal(
                    response: .error(
                        400, code: "unknown_identifier_kind",
                        message: "\"\(name.prefix(64))\" is not an identifier kind; the kinds are "
                            + (sources.kinds + [.groupId]).map(\.name).joined(separator: ", "))))
        }
        guard let identifier = sources.identifier(kind, value) else {
            return .failure(IdentifierRefusal(response: Self.invalidIdentifier))
        }
        return .success(identifier)
    }

    /// Why a request's identifier was refused: the answer to give.
    struct IdentifierRefusal: Error {
        var response: HTTPResponse
    }

    static func object(_ body: (inout JSONWriter.ObjectWriter) -> Void) -> [UInt8] {
        var writer = JSONWriter()
        writer.writeObject(body)
        return writer.bytes
    }

    struct QueryError: Error {
        var message: String
    }

    func adminStatus(_ request: HTTPRequest, respond: @Sendable (HTTPResponse) -> Void) {
        respond(
            .json(
                200,
                Self.object { o in
                    o.member("node", string: settings.nodeName)
                    o.member("version", string: Self.version)
                    o.member("uptimeSeconds", integer: (host.monotonicMillis() - startedAt) / 1_000)
                    o.member("dataDirectory", string: settings.dataDirectory)
                    o.member("lmdbFileBytes", integer: Int64(store.fileBytes))
                    o.member("lmdbMapBytes", integer: Int64(store.mapBytes))
                    o.member("openConnections", integer: Int64(host.openConnections))
                    o.member("commits", integer: Int64(writer.commits))
                    o.member("committedMessages", integer: Int64(writer.committedMessages))
                    o.member("writeLogBytes", integer: Int64(writer.writeLogBytes))
                    if let check = clockCheck {
                        o.member("clock") { w in
                            w.writeObject { c in
                                c.member("verdict", string: check.verdict.rawValue)
                                c.member("acceptsWrites") { $0.write(.bool(check.allowsWrites)) }
                                if let offset = check.offset { c.member("offsetMs", integer: offset) }
                                c.member("maxOffsetMs", integer: check.maximumOffset)
                                c.member("coreMembersAgreeing", integer: Int64(check.agreeing))
                                c.member("coreMembersMeasured", integer: Int64(check.measured))
                                c.member("coreMembers", integer: Int64(check.members))
                            }
                        }
                    }
                }))
    }

    /// `{"directory": "/path"}`: a compacted, consistent copy of the store, taken live.
    func adminBackup(_ request: HTTPRequest, respond: @escaping @Sendable (HTTPResponse) -> Void) {
        // A body that is not JSON is answered 400, as one without a directory.
        guard let directory = (try? JSONParser.parse(request.body))?["directory"]?.stringValue, !directory.isEmpty else {
            return respond(.error(400, code: "invalid_request", message: "send {\"directory\": \"/path/for/the/backup\"}"))
        }
        // A copy of the whole store takes a while: off the event loop.
        host.background { [store] in
            do {
                let size = try store.backup(into: directory)
                respond(
                    .json(
                        200,
                        Self.object { o in
                            o.member("directory", string: directory)
                            o.member("bytes", integer: Int64(size))
                        }))
            } catch {
                respond(.error(409, code: "backup_failed", message: "\(error)"))
            }
        }
    }

    /// Compacts the data file now, while the node serves (docs/storage.md, "Compaction while
    /// serving"): the free pages go back to the file system. No body.
    func adminCompact(_ request: HTTPRequest, respond: @escaping @Sendable (HTTPResponse) -> Void) {
        // The copy takes as long as a backup: off the event loop.
        host.background { [host] in
            switch host.compactDataFile() {
            case .compacted(let bytesBefore, let bytesAfter):
                respond(
                    .json(
                        200,
                        Self.object { o in
                            o.member("bytesBefore", integer: Int64(bytesBefore))
                            o.member("bytesAfter", integer: Int64(bytesAfter))
                        }))
            case .gaveUp(let reason):
                respond(.error(409, code: "compaction_gave_up", message: "the compaction gave up and changed nothing: \(reason); try again"))
            case .running:
                respond(.error(409, code: "compaction_running", message: "a compaction of the data file is under way"))
            case .nothingToCompact:
                respond(.error(409, code: "nothing_to_compact", message: "this node's store is in memory: there is no data file to compact"))
            case .notDue:
                preconditionFailure("a compaction asked for was found not due")
            }
        }
    }

    /// The principal of the request's bearer token, if it is one of ours.
    func principal(_ request: HTTPRequest) -> Principal? {
        guard let authorization = request.header("authorization") else { return nil }
        var bytes = Array(authorization.utf8)
        let scheme = Array("bearer ".utf8)
        guard bytes.count > scheme.count, zip(bytes, scheme).allSatisfy({ $0 | 0x20 == $1 }) else { return nil }
        bytes.removeFirst(scheme.count)
        while bytes.last == UInt8(ascii: " ") || bytes.last == UInt8(ascii: "\t") { bytes.removeLast() }
        while bytes.first == UInt8(ascii: " ") || bytes.first == UInt8(ascii: "\t") { bytes.removeFirst() }
        let presented = Crypto.sha256(bytes)
        var found: Principal?
        // Every hash is compared, so timing says nothing about which one matched.
        for entry in settings.principals where Crypto.constantTimeEquals(entry.hash, presented) { found = entry.principal }
        return found
    }

    /// The request's principal if it holds one of `roles`; otherwise answers 401 (no valid
    /// token) or 403 (a role that may not do this) and returns nil.
    func authorized(_ request: HTTPRequest, _ roles: Set<Role>, _ respond: (HTTPResponse) -> Void) -> Principal? {
        guard let principal = principal(request) else {
            respond(.error(401, code: "unauthorized", message: "a valid bearer token is required"))
            return nil
        }
        guard roles.contains(principal.role) else {
            let names = roles.map(\.rawValue).sorted().joined(separator: " or ")
            respond(.error(403, code: "forbidden", message: "this needs the \(names) role; the token has \(principal.role.rawValue)"))
            return nil
        }
        return principal
    }

    /// `a=1&b=x%20y` → ["a": "1", "b": "x y"] (the last value of a repeated name wins; `+` is a
    /// space). Byte-level: every read parses its query, so no Foundation string searching.
    static func segmentError(_ code: String, _ message: String) -> [UInt8] {
        var writer = JSONWriter()
        writer.writeObject { object in
            object.member("code", string: code)
            object.member("message", string: message)
        }
        return writer.bytes
    }

    /// Answers `/metrics`; the replication core's progress is read on its thread, and left out
    /// if that thread does not answer in time.
    func metrics(respond: @escaping @Sendable (HTTPResponse) -> Void) {
        var text = metrics.prometheusText()
        text += NodeMetrics.metric("kith_open_connections", "gauge", "Open HTTP connections.", host.openConnections)
        text += NodeMetrics.metric("kith_commits_total", "counter", "Write transactions committed.", writer.commits)
        text += NodeMetrics.metric(
            "kith_applied_messages_total", "counter", "Messages committed (new, duplicate or forgotten).",
            writer.committedMessages)
        text += NodeMetrics.metric("kith_lmdb_size_bytes", "gauge", "Size of the LMDB data file.", store.fileBytes)
        if let used = try? store.usedBytes() {  // tables that cannot be read are left out; the other metrics still answer
            text += NodeMetrics.metric(
                "kith_lmdb_used_bytes", "gauge", "Bytes of the pages the tables hold (the rest of the file is free pages).", used)
        }
        text += NodeMetrics.metric("kith_write_log_bytes", "gauge", "Bytes in the write-ahead log's open segment.", writer.writeLogBytes)
        text += NodeMetrics.metric(
            "kith_write_log_syncs_total", "counter", "Syncs of the write-ahead log (each answers every write waiting).", writer.writeLogSyncs)
        text += NodeMetrics.metric(
            "kith_reads_waiting_for_commit", "gauge", "Reads waiting for the commit of writes acknowledged before them.", commitWaiters.count)
        let retention = host.retention
        text += NodeMetrics.metric("kith_retention_passes_total", "counter", "Retention sweeps over the whole store finished.", retention.passes)
        text += NodeMetrics.metric(
            "kith_retention_events_dropped_total", "counter", "Events dropped because their retention had passed.", retention.eventsDropped)
        text += NodeMetrics.metric(
            "kith_retention_traits_dropped_total", "counter", "Traits dropped because their retention had passed.", retention.traitsDropped)
        text += NodeMetrics.metric(
            "kith_retention_messages_dropped_total", "counter",
            "Records of identify, group and alias calls dropped because their retention had passed.",
            retention.messagesDropped)
        text += NodeMetrics.metric(
            "kith_retention_grants_lapsed_total", "counter", "Consent grants dropped because their retention had passed (they read as never given).",
            retention.grantsDropped)
        text += NodeMetrics.metric(
            "kith_ledger_blocks_deflated_total", "counter", "Ledger blocks the sweeps stored deflated (ingest leaves them plain).",
            retention.blocksDeflated)
        text += NodeMetrics.metric(
            "kith_identifier_rows_deflated_total", "counter", "Identifier rows the sweeps stored deflated (ingest leaves them plain).",
            retention.rowsDeflated)
        text += NodeMetrics.metric(
            "kith_rows_repacked_total", "counter", "Rows the sweeps wrote again in their stored order, to fill their pages.", retention.rowsRepacked)
        text += NodeMetrics.metric(
            "kith_retention_writer_seconds_total", "counter", "Seconds the writer spent on retention sweep steps.", retention.writerSeconds)
        text += NodeMetrics.metric(
            "kith_data_file_compactions_total", "counter", "Compacting copies of the data file swapped in while serving.", retention.compactions)
        text += NodeMetrics.metric(
            "kith_data_file_compactions_given_up_total", "counter",
            "Compactions of the data file that gave up (readers busy, too many writes during the copy, or a failure).",
            retention.compactionsGivenUp)
        if let log = try? store.logExtent() {  // a log that cannot be read is left out; the other metrics still answer
            text += NodeMetrics.metric(
                "kith_change_log_span", "gauge", "Local sequences the change log holds (an upper bound on its entries).", Int(clamping: log.span))
            text += NodeMetrics.metric(
                "kith_change_log_truncated_through", "gauge", "The local sequence through which the change log was truncated.",
                Int(clamping: log.truncatedThrough))
        }
        text += NodeMetrics.metric(
            "kith_feed_polls_waiting", "gauge", "Change-feed long polls waiting for the log to grow.", feedWaiters.count)
        text += webhookMetrics()
        let auditQueue = audit.queue
        text += NodeMetrics.metric(
            "kith_audit_queue_records", "gauge", "Read-audit records waiting for the audit's writer (reads are refused once it is full).",
            auditQueue.records)
        text += NodeMetrics.metric("kith_audit_queue_limit", "gauge", "How many records the read-audit queue holds.", auditQueue.limit)
        let answer: @Sendable (String) -> Void = { text in
            respond(HTTPResponse(status: 200, headers: [HTTPHeader("Content-Type", "text/plain; version=0.0.4")], body: Array(text.utf8)))
        }
        guard let replication else { return answer(text) }
        text += replicationMetrics(replication)
        let linksAndClock = text
        replication.call({ node in
            (node.counters, try node.membership.reachable.compactMap { peer in try node.lag(of: peer.id).map { (peer.name, $0.changes) } })
        }) { result in
            guard case .success(let (counters, lags)) = result else { return answer(linksAndClock) }
            answer(linksAndClock + Self.replicationProgress(counters, lags: lags))
        }
    }

    /// This node's clock against the cluster's, and each measured peer's offset.
    func clockMetrics(_ clock: ClockState) -> String {
        var text = NodeMetrics.metric(
            "kith_clock_within_bound", "gauge", "1 while this node's clock is within the bound of the cluster's (writes accepted), else 0.",
            clock.check.allowsWrites ? 1 : 0)
        text += NodeMetrics.metric(
            "kith_clock_max_offset_ms", "gauge", "The configured bound on this node's clock offset.", clock.check.maximumOffset)
        if let offset = clock.check.offset {
            text += NodeMetrics.metric(
                "kith_clock_offset_ms", "gauge", "This node's clock minus the median of the reachable core members' and its own.", offset)
        }
        text += NodeMetrics.metric("kith_clock_jumps_total", "counter", "Jumps of the wall clock against the monotonic clock.", clock.jumps)
        text += NodeMetrics.family(
            "kith_peer_clock_offset_ms", "gauge", "A peer's clock minus this node's, from the shortest recent round trip.", label: "peer",
            clock.peers.map { ($0.name, $0.clock.offset) })
        return text
    }

    /// Peer links and replication progress.
    func replicationMetrics(_ replication: any APIReplication) -> String {
        let links = replication.links
        var text = ""
        for (name, help, value) in [
            ("kith_peer_frames_sent_total", "Peer frames sent.", links.framesSent),
            ("kith_peer_frames_received_total", "Authentic peer frames received.", links.framesReceived),
            ("kith_peer_bytes_sent_total", "Bytes sent on peer links.", links.bytesSent),
            ("kith_peer_bytes_received_total", "Bytes received on peer links.", links.bytesReceived),
            (
                "kith_peer_frames_dropped_total", "Frames dropped: queue full, peer unreachable, or refused on receipt.",
                links.framesDropped
            ),
            (
                "kith_peer_connections_refused_total", "Peer connections refused (different forget-key secret).",
                links.connectionsRefused
            ),
        ] {
            text += NodeMetrics.metric(name, "counter", help, value)
        }
        text += NodeMetrics.family(
            "kith_peer_connections_closed_total", "counter",
            "Inbound peer connections closed for bad input, by reason (warnings about them are rate-limited).", label: "reason",
            links.closedConnections.sorted(by: { $0.key < $1.key }).map { ($0.key, $0.value) })
        text += clockMetrics(replication.clock)
        return text
    }

    /// The replication core's counters and the changes reachable peers lack.
    static func replicationProgress(_ counters: ClusterNode.Counters, lags: [(peer: String, changes: Int)]) -> String {
        var text = NodeMetrics.family(
            "kith_replication_peer_lag_changes", "gauge", "Changes here that a reachable peer lacks, as of its last pull.", label: "peer",
            lags.sorted(by: { $0.peer < $1.peer }).map { ($0.peer, $0.changes) })
        for (name, type, help, value) in [
            ("kith_replication_pulls_total", "counter", "Pulls (repairs) sent to peers.", counters.pullsSent),
            ("kith_membership_members_down_total", "counter", "Members this node saw go down (declared dead, away or left).", counters.membersDown),
            ("kith_replication_changes_applied_total", "counter", "Replicated changes new here.", counters.changesApplied),
            ("kith_replication_pushes_rejected_total", "counter", "Pushes refused for a gap (a pull fills it).", counters.pushesRejected),
            (
                "kith_replication_push_writes_total", "counter",
                "Write transactions that applied peers' pushes (pushes waiting on one share the next).",
                counters.pushBatches
            ),
            ("kith_antientropy_comparisons_total", "counter", "Digest-tree comparisons this node finished.", counters.antiEntropyCompleted),
            ("kith_antientropy_documents_sent_total", "counter", "Document states sent by tree comparisons.", counters.documentsSent),
            (
                "kith_antientropy_documents_repaired_total", "counter", "Document states received that changed something here.",
                counters.documentsRepaired
            ),
            (
                "kith_change_log_records_truncated_total", "counter", "Change-log records dropped, every member having read them.",
                counters.logRecordsTruncated
            ),
            (
                "kith_change_log_resyncs_total", "counter", "Tree comparisons that brought a peer behind the truncated log up to date.",
                counters.resyncsCompleted
            ),
            (
                "kith_change_log_truncations_failed_total", "counter", "Log truncations that failed (tried again at the next plan).",
                counters.logTruncationsFailed
            ),
            (
                "kith_forget_records_compacted_total", "counter",
                "Forget records dropped, every member that counts holding their erasures (forget compaction).", counters.forgetRecordsCompacted
            ),
            (
                "kith_quarantined_messages_refused_total", "counter",
                "Replication messages not taken from peers quarantined after a forget compaction.", counters.quarantinedMessagesRefused
            ),
        ] {
            text += NodeMetrics.metric(name, type, help, value)
        }
        return text
    }
}
