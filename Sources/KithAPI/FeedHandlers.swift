import KithCRDT
import KithCluster
import KithCrypto
import KithHTTP
import KithJSON
import KithPolicy
import KithProfile

/// `GET /v1/changes`: the change feed (docs/feed.md). The rules — where a token starts, which
/// entries a consumer is given, the token after them — are `ChangeFeed`'s; this walks the store
/// with them, renders each change through the read policy for the consumer's purpose, writes
/// each delivery to the read audit, and holds a long poll until the log grows or it times out.
extension NodeAPI {
    /// The longest a long poll waits (`wait=`, seconds).
    static let feedMaximumWaitSeconds = 60
    /// Log entries one request looks at, given or passed over: a walk that resumes a token from
    /// another node starts at the oldest entry held, and comes back with its token advanced.
    static let feedScanBudget = 20_000

    /// What one feed request asked for.
    struct FeedRequest: Sendable {
        var purpose: String
        var principal: Principal
        var token: FeedToken?
        var filter: FeedFilter
        var limit: Int
        var full: Bool
        var waitMillis: Int64
    }

    func changes(_ call: RouteCall) {
        let request: FeedRequest
        switch feedRequest(call) {
        case .success(let parsed): request = parsed
        case .failure(let refusal): return call.respond(refusal.response)
        }
        let deadline = host.monotonicMillis() + request.waitMillis
        let token: FeedToken
        do { token = try request.token ?? feedTokenNow() } catch {
            return call.respond(.error(500, code: "storage_error", message: "the change log could not be read"))
        }
        if call.request.header("accept")?.contains("text/event-stream") == true {
            return feedStream(request, from: token, respond: call.respond)
        }
        feedAnswer(request, from: token, deadline: deadline, respond: call.respond)
    }

    /// How often an event stream with nothing to say sends a comment, so that the client and
    /// the proxies between know it is alive (and the server's idle timeout does not end it).
    static let feedHeartbeatMillis = 15_000
    /// Bytes an event stream may have waiting for a slow client before the walk pauses.
    static let feedStreamBacklogBytes = 1 << 20

    /// `Accept: text/event-stream`: the feed as Server-Sent Events, for as long as the client
    /// stays. Each record is one event; the last event of each page carries the token after it
    /// as its `id`, which a reconnecting client sends back as `Last-Event-ID`. A token the log
    /// no longer holds is refused before the stream starts (410, as for a long poll).
    private func feedStream(_ request: FeedRequest, from token: FeedToken, respond: Respond) {
        // Commits counted before the walk: one landing after it is walked, not waited past.
        let seen = feedWaiters.generation
        let page: FeedPage
        let events: [UInt8]
        do {
            page = try feedWalk(from: token, request)
            events = try feedEvents(page, request)
        } catch let refusal as WalkRefusal {
            return respond(refusal.response)
        } catch {
            return respond(Self.attempt { throw error })
        }
        let stream = HTTPBodyStream()
        metrics.feedStreams.add(1, ordering: .relaxed)
        stream.onClose { [metrics] in metrics.feedStreams.subtract(1, ordering: .relaxed) }
        let headers = [HTTPHeader("Content-Type", "text/event-stream"), HTTPHeader("Cache-Control", "no-cache")]
        respond(HTTPResponse(status: 200, headers: headers, stream: stream))
        stream.send(Array("retry: 2000\n\n".utf8) + events)
        feedStreamNext(request, after: page, walkedAt: seen, stream: stream)
    }

    /// What an event stream does after sending `page`: walks on at once while the log holds
    /// more, and otherwise waits for a commit, sending a heartbeat every `feedHeartbeatMillis`.
    /// `seen`: the commits counted before the walk that gave `page`.
    private func feedStreamNext(_ request: FeedRequest, after page: FeedPage, walkedAt seen: UInt64, stream: HTTPBodyStream) {
        guard !stream.isClosed else { return }
        guard !stopping.load(ordering: .relaxed) else { return stream.finish() }
        let walk: @Sendable () -> Void = { [self] in feedStreamStep(request, from: page.token, stream: stream) }
        if stream.unwrittenBytes > Self.feedStreamBacklogBytes {
            // A slow client: wait for the socket to take what is queued.
            if !host.after(millis: 50, { [host] in host.background(walk) }) { stream.finish() }
            return
        }
        if !page.given.isEmpty || !page.atEnd { return host.background(walk) }
        let waiter = LogWaiters.Waiter { [self] expired, id in
            if !expired { feedWaiters.done(id) }
            host.background {
                if expired && !self.stopping.load(ordering: .relaxed) { stream.send(Array(": keep-alive\n\n".utf8)) }
                // Not at the end: it walks again (after a pause for a slow client), whatever `seen`.
                self.feedStreamNext(request, after: FeedPage(given: [], token: page.token, atEnd: false), walkedAt: seen, stream: stream)
            }
        }
        switch feedWaiters.wait(waiter, id: nil, unless: seen) {
        case .waiting(let id, _):
            if !host.after(millis: Self.feedHeartbeatMillis, { [feedWaiters] in feedWaiters.expire(id) }) { feedWaiters.expire(id) }
        case .logAdvanced: host.background(walk)
        case .over: stream.finish()
        }
    }

    /// One walk of an event stream, its events sent.
    private func feedStreamStep(_ request: FeedRequest, from token: FeedToken, stream: HTTPBodyStream) {
        guard !stream.isClosed else { return }
        let seen = feedWaiters.generation
        do {
            let page = try feedWalk(from: token, request)
            stream.send(try feedEvents(page, request))
            feedStreamNext(request, after: page, walkedAt: seen, stream: stream)
        } catch {
            // The log moved past the stream (truncated while the client was slow) or could not
            // be read: an error event, and the stream ends; the client resumes or resyncs.
            let response = (error as? WalkRefusal)?.response ?? Self.attempt { throw error }
            stream.send(Array("event: error\ndata: ".utf8) + response.body + Array("\n\n".utf8))
            stream.finish()
        }
    }

    /// A page as events: `data:` each record, `id:` the token after the page on its last one.
    private func feedEvents(_ page: FeedPage, _ request: FeedRequest) throws -> [UInt8] {
        let records = try feedRecords(page, request)
        var bytes: [UInt8] = []
        for (index, record) in records.enumerated() {
            if index == records.count - 1 { bytes += Array("id: \(FeedTokenText.text(page.token))\n".utf8) }
            bytes += Array("data: ".utf8) + record + Array("\n\n".utf8)
        }
        return bytes
    }

    /// Walks from `token`; answers at once when something was given, the walk stopped short of
    /// the log's end, or the deadline passed, and otherwise waits for the log to grow. `id`:
    /// the poll's place among the waiters once it has waited.
    private func feedAnswer(_ request: FeedRequest, from token: FeedToken, deadline: Int64, id: UInt64? = nil, respond: @escaping Respond) {
        let seen = feedWaiters.generation
        let page: FeedPage
        let body: [UInt8]
        let answer: Respond = { [feedWaiters] response in
            if let id { feedWaiters.done(id) }
            respond(response)
        }
        do {
            page = try feedWalk(from: token, request)
            body = try feedBody(page, request)
        } catch let refusal as WalkRefusal {
            return answer(refusal.response)
        } catch {
            return answer(Self.attempt { throw error })
        }
        guard page.given.isEmpty, page.atEnd, host.monotonicMillis() < deadline else { return answer(.json(200, body)) }
        let waiter = LogWaiters.Waiter { [self] expired, id in
            host.background {
                if expired { return respond(.json(200, body)) }
                self.feedAnswer(request, from: page.token, deadline: deadline, id: id, respond: respond)
            }
        }
        switch feedWaiters.wait(waiter, id: id, unless: seen) {
        case .waiting(let id, let new):
            guard new else { return }
            let scheduled = host.after(millis: Int(max(0, deadline - host.monotonicMillis()))) { [feedWaiters] in feedWaiters.expire(id) }
            if !scheduled { feedWaiters.expire(id) }
        case .logAdvanced: feedAnswer(request, from: page.token, deadline: deadline, id: id, respond: respond)
        case .over: respond(.json(200, body))
        }
    }

    /// The token of a consumer that starts now (`since` left out).
    func feedTokenNow() throws -> FeedToken {
        let durable = try store.durableLogSequence()
        let versions = try store.versionVector()
        var tail: [ChangeEntry] = []
        while true {
            let more = try store.changes(after: tail.last?.sequence ?? durable, limit: 1_024)
            tail += more
            if more.count < 1_024 { break }
        }
        return ChangeFeed.now(node: origin, durable: durable, versions: versions, tail: tail)
    }

    /// One walk of this node's log for `request`, from `token` (`ChangeFeed.walk`).
    func feedWalk(from token: FeedToken, _ request: FeedRequest) throws -> FeedPage {
        let durable = try store.durableLogSequence()
        let walked = try ChangeFeed.walk(
            from: token, node: origin, log: try store.logExtent(), durable: durable, filter: request.filter, limit: request.limit,
            budget: Self.feedScanBudget, read: store.changes(after:limit:))
        switch walked {
        case .success(let page): return page
        case .failure(let expired):
            metrics.feedTokensExpired.add(1, ordering: .relaxed)
            throw WalkRefusal(
                response: .error(
                    410, code: "feed_token_expired",
                    message: expired.reason + ". Resync: read every profile with GET /v1/admin/export?purpose=\(request.purpose) "
                        + "(its first page's Kith-Feed-Token header is where the feed then resumes), and follow the feed from that token"))
        }
    }

    /// The records of a page, each change through the read policy and the audit.
    func feedRecords(_ page: FeedPage, _ request: FeedRequest) throws -> [[UInt8]] {
        var records: [[UInt8]] = []
        for entry in page.given { records += try feedRecords(entry, request) }
        metrics.feedRecords.add(records.count, ordering: .relaxed)
        return records
    }

    /// `{"changes": [...], "next": TOKEN}`.
    private func feedBody(_ page: FeedPage, _ request: FeedRequest) throws -> [UInt8] {
        let records = try feedRecords(page, request)
        var writer = JSONWriter(capacity: 256 + records.reduce(0) { $0 + $1.count })
        writer.writeObject { object in
            object.member("changes") { writer in writer.writeArray(records) { $0.raw(bytes: $1) } }
            object.member("next", string: FeedTokenText.text(page.token))
        }
        return writer.bytes
    }

    /// The records of one change: a message or an unmerge shows each profile it touched as a
    /// read for the purpose shows it; an erasure only the keys of what was erased.
    private func feedRecords(_ entry: ChangeEntry, _ request: FeedRequest) throws -> [[UInt8]] {
        let change = Crypto.hex(Self.bigEndian(entry.origin)) + "." + String(entry.originSequence)
        switch entry.change {
        case .erasure(let keys, let time):
            return [
                Self.object { object in
                    object.member("kind", string: "erasure")
                    object.member("change", string: change)
                    object.member("time") { $0.write(time: time) }
                    object.member("erasedKeys") { $0.writeArray(keys) { $0.write(string: Crypto.hex($1)) } }
                }
            ]
        case .setting:
            return []
        case .unlink(let edge, let stamp):
            var records: [[UInt8]] = []
            var shown: Set<Identifier> = []
            for end in [edge.low, edge.high] {
                guard let view = try store.view(of: end).map(readable), shown.insert(view.canonical).inserted else { continue }
                records.append(try feedRecord(view, kind: "unmerge", change: change, time: stamp.time, delta: nil, request))
            }
            return records
        case .message(let delta):
            // A customer erased or expired since: nothing to show.
            guard let view = try store.view(of: delta.subject).map(readable) else { return [] }
            return [try feedRecord(view, kind: "change", change: change, time: delta.times.eventTime, delta: delta, request)]
        }
    }

    /// One profile in a record, as a read for the request's purpose shows it: whole (`view=full`),
    /// or only what `delta` changed (its traits, event, consent and links), with values as the
    /// profile holds them now. Taken from the rendered read, so nothing the read withholds can
    /// appear; written to the read audit as a read is.
    private func feedRecord(_ view: ProfileView, kind: String, change: String, time: Int64, delta: ProfileDelta?, _ request: FeedRequest) throws
        -> [UInt8]
    {
        let consent = ConsentState(view.head, vocabulary: policy.consentVocabulary)
        let decision = try ReadDecision(policy: policy, principal: request.principal, requestedPurpose: request.purpose, consent: consent)
        var renderer = PolicyRenderer(decision: decision)
        let profile = renderer.profile(view)
        let event = delta?.event.map { renderer.eventsResource([$0]) { _ in } }
        let record = try Self.feedRecordBody(
            profile: profile, event: event, kind: kind, change: change, time: time, delta: delta, full: request.full,
            keys: view.members.map { Crypto.hex(settings.subjectHasher.forgetKeyBytes(for: $0)) }, restricted: consent.restricted)
        try recordRead(request.principal, request.purpose, "feed", view.members, renderer.outcome)
        return record
    }

    /// Writes a record from a rendered read (`profile`, and `event` rendered the same way).
    static func feedRecordBody(
        profile: [UInt8], event: [UInt8]?, kind: String, change: String, time: Int64, delta: ProfileDelta?, full: Bool, keys: [String],
        restricted: Bool
    ) throws -> [UInt8] {
        let rendered = try JSONParser.parse(profile)
        return object { object in
            object.member("kind", string: kind)
            object.member("change", string: change)
            object.member("time") { $0.write(time: time) }
            if let id = rendered["id"] { object.member("id", id) }
            object.member("keys") { $0.writeArray(keys) { $0.write(string: $1) } }
            if full { return object.member("profile") { $0.raw(bytes: profile) } }
            if let identifiers = rendered["identifiers"] { object.member("identifiers", identifiers) }
            guard let delta else { return }
            object.member("messageId", string: delta.messageId)
            if case .object(let traits)? = rendered["traits"], !delta.traits.isEmpty {
                let changed = Set(delta.traits.members.map(\.key))
                object.member("traits", .object(JSONObject(traits.members.filter { changed.contains($0.key) })))
            }
            if let event, let shown = (try? JSONParser.parse(event))?["events"]?.arrayValue?.first {  // nil: the read shows no events
                object.member("event", shown)
            }
            if !delta.consent.isEmpty, let consent = rendered["consent"] { object.member("consent", consent) }
            // A restriction of processing (or its lifting): whether the profile is restricted now.
            if delta.consent.contains(where: { $0.category == ConsentDecision.processingCategory }) {
                object.member("restricted", .bool(restricted))
            }
            if !delta.links.isEmpty { object.member("merged", .bool(true)) }
            if case .array(let withheld)? = rendered["withheld"], !withheld.isEmpty { object.member("withheld", .array(withheld)) }
        }
    }

    private static func bigEndian(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) } }

    /// The request's query, checked: the purpose, the token, the filters and the page.
    private func feedRequest(_ call: RouteCall) -> Result<FeedRequest, WalkRefusal> {
        func refuse(_ code: String, _ message: String) -> Result<FeedRequest, WalkRefusal> {
            .failure(WalkRefusal(response: .error(400, code: code, message: message)))
        }
        let query = call.request.queryItems
        let purpose: String
        do { purpose = try ReadDecision.purpose(policy: policy, principal: call.caller, requested: query["purpose"]) } catch {
            return .failure(WalkRefusal(response: Self.refusal(error)))
        }
        var token: FeedToken?
        // An event stream's client reconnects with the id of the last event it had.
        switch query["since"] ?? call.request.header("last-event-id") {
        case nil, "now": token = nil
        case "0": token = FeedToken(versions: VersionVector(), node: origin, position: 0)
        case let text?:
            guard let parsed = FeedTokenText.parse(text) else { return refuse("invalid_token", "since is not a token this API returned, 0 or now") }
            token = parsed
        }
        let limit = query["limit"].flatMap(Int.init) ?? 100
        guard (1...1_000).contains(limit) else { return refuse("invalid_query", "limit must be 1 to 1000") }
        let wait = query["wait"].flatMap(Int.init) ?? 0
        guard (0...Self.feedMaximumWaitSeconds).contains(wait) else {
            return refuse("invalid_query", "wait must be 0 to \(Self.feedMaximumWaitSeconds) seconds")
        }
        let full: Bool
        switch query["view"] {
        case nil, "changes": full = false
        case "full": full = true
        default: return refuse("invalid_query", "view must be changes or full")
        }
        func names(_ key: String) -> Set<String>? {
            query[key].map { Set($0.split(separator: ",").map(String.init)) }
        }
        var kinds: Set<IdentifierKind>?
        if let requested = names("kinds") {
            let known = settings.identifierSources.kinds
            var found: Set<IdentifierKind> = []
            for name in requested {
                guard let kind = IdentifierKind(name: name), known.contains(kind) else {
                    return refuse(
                        "unknown_identifier_kind",
                        "\"\(name.prefix(64))\" is not an identifier kind; the kinds are " + known.map(\.name).joined(separator: ", "))
                }
                found.insert(kind)
            }
            kinds = found
        }
        return .success(
            FeedRequest(
                purpose: purpose, principal: call.caller, token: token,
                filter: FeedFilter(events: names("events"), traits: names("traits"), kinds: kinds),
                limit: limit, full: full, waitMillis: Int64(wait) * 1_000))
    }
}

/// The change feed's token as text: `f1.` and the hex of its binary form (`FeedToken`).
enum FeedTokenText {
    static let prefix = "f1."

    static func text(_ token: FeedToken) -> String { TokenText.text(token, prefix: prefix) }

    /// The token, or nil for text this version did not make.
    static func parse(_ text: String) -> FeedToken? { TokenText.parse(text, prefix: prefix) }
}
