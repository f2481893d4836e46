import KithCRDT
import KithCluster
import KithCrypto
import KithHTTP
import KithJSON
import KithPolicy
import KithProfile
import KithStore

/// `/v1/profiles/{identifier}[/…]`: reads through the privacy policy, and the privacy operations
/// (consent, restriction, erasure, export, audit). See docs/privacy.md.
extension NodeAPI {
    typealias Respond = @Sendable (HTTPResponse) -> Void

    /// What a profile route does (each route of `NodeAPI.routes` under `/v1/profiles/` names one).
    enum ProfileAction: Sendable {
        /// A read for a purpose: the whole profile ("") or one part of it.
        case read(resource: String)
        case consent, setConsent, links, unlink, erase, export, audit
        case restrict(Bool)

        /// Whether it answers from the profile held (a scoped site forwards those it does not hold).
        var reads: Bool {
            switch self {
            case .read, .consent, .links, .export: true
            case .setConsent, .unlink, .erase, .audit, .restrict: false
            }
        }
    }

    /// A profile resource (`/v1/profiles/{identifier}…`): its caller already holds a role the
    /// route allows. Reads first wait for the consistency or session they ask for.
    func profileRoute(_ call: RouteCall, _ action: ProfileAction) {
        let (request, respond, principal) = (call.request, call.respond, call.caller)
        let identifier: Identifier
        switch self.identifier(call.parameters["identifier"]) {
        case .success(let named): identifier = named
        case .failure(let refusal): return respond(refusal.response)
        }
        // Parsed once: the read levels and the resource handlers all take their items from it.
        let query = request.queryItems
        let dispatch: @Sendable (@escaping Respond) -> Void = { [self] respond in
            perform(action, identifier, request, query, principal, call.parameters, respond: respond)
        }
        guard request.method == "GET" else { return dispatch(respond) }
        let level: WriteConcern?
        switch query["consistency"] {
        case nil, "local": level = nil
        case "quorum": level = .quorum
        case "all": level = .all
        default: return respond(.error(400, code: "invalid_query", message: "consistency must be local, quorum or all"))
        }
        let session: VersionVector?
        if let text = request.header(SessionToken.header) {
            guard let token = SessionToken.parse(text) else {
                return respond(.error(400, code: "invalid_session", message: "the \(SessionToken.header) header is not a token this API returned"))
            }
            session = token
        } else {
            session = nil
        }
        afterAcknowledgedWrites(token: session?[origin] ?? 0, respond: respond) { [self] respond in
            withReplicaReads(level, degradedAllowed: query["degraded"] == "true", respond: respond) { [self] respond in
                guard let session else { return dispatch(respond) }
                withSession(session, respond: respond) { respond in dispatch(respond) }
            }
        }
    }

    /// How long a read at `consistency=quorum` or `all` waits for the replicas.
    static let replicaReadWaitMillis: Int64 = 2_000

    /// Runs `body` once this node has pulled everything from as many replicas as `level` asks
    /// (none for a local read), and tells in `Kith-Consistency` how many answered. When too few
    /// answer in time: 503 `insufficient_replicas`, or with `degraded=true` the local answer
    /// marked degraded.
    private func withReplicaReads(
        _ level: WriteConcern?, degradedAllowed: Bool, respond: @escaping Respond, _ body: @escaping @Sendable (@escaping Respond) -> Void
    ) {
        guard let level else { return body(respond) }
        let answer: @Sendable (Int, Int, Bool) -> Void = { [host] answered, required, met in
            guard met || degradedAllowed else {
                return respond(
                    Self.insufficientReplicas(
                        "\(answered) of the \(required) replicas consistency=\(level.rawValue) needs answered; retry, or allow a degraded answer with degraded=true",
                        counted: ("answered", answered), required: required))
            }
            let note = (met ? level.rawValue : "degraded") + "; replicas=\(answered); required=\(required)"
            host.background {
                body { response in
                    var response = response
                    response.headers.append(HTTPHeader("Kith-Consistency", note))
                    respond(response)
                }
            }
        }
        guard let replication else { return answer(1, 1, true) }
        replication.awaitReplicaReads(level, timeoutMillis: Self.replicaReadWaitMillis, completion: answer)
    }

    /// How long a read that presents a session token waits for the changes the token covers.
    static let sessionWaitMillis: Int64 = 2_000

    /// Runs `body` once this node holds everything `token` covers (at once, or after waiting and
    /// pulling from its peers), and answers with the token raised to what this node held; or
    /// answers 503 `session_not_satisfied` naming the origins still missing.
    private func withSession(_ token: VersionVector, respond: @escaping Respond, _ body: @escaping @Sendable (@escaping Respond) -> Void) {
        let answer: @Sendable (VersionVector) -> Void = { held in
            var merged = token
            merged.merge(held)
            let raised = merged
            body { response in
                var response = response
                response.headers.append(HTTPHeader(SessionToken.header, SessionToken.text(raised)))
                respond(response)
            }
        }
        // The common case without a hop to the replication thread: a read here, by the rule the
        // node's wait applies (`SessionCoverage`).
        let missing: [UInt64]
        do {
            missing = try sessionCheck(token)
            if missing.isEmpty { return answer(try store.versionVector()) }
        } catch {
            return respond(.error(500, code: "storage_error", message: "the profile could not be read"))
        }
        guard let replication else { return respond(Self.sessionNotSatisfied(missing)) }
        let store = self.store
        replication.awaitSession(token, timeoutMillis: Self.sessionWaitMillis) { [host] missing in
            // Off the replication thread: the read that follows is the handler's.
            host.background {
                guard missing.isEmpty else { return respond(Self.sessionNotSatisfied(missing)) }
                do { answer(try store.versionVector()) } catch {
                    respond(.error(500, code: "storage_error", message: "the profile could not be read"))
                }
            }
        }
    }

    /// The origins of a token whose changes this node does not hold yet (`SessionCoverage`).
    var sessionCheck: @Sendable (VersionVector) throws -> [UInt64] {
        let store = self.store, origin = self.origin
        return { token in try SessionCoverage.missing(token, in: store, origin: origin) }
    }

    static func sessionNotSatisfied(_ missing: [UInt64]) -> HTTPResponse {
        .error(
            503, code: "session_not_satisfied",
            message: "this node does not yet hold every change the session covers (from origins "
                + missing.map { String($0, radix: 16) }.joined(separator: ", ") + "); retry, or read where the write was made")
    }

    /// `/v1/groups/{groupId}`: a group's document (its `group` calls' traits), read for a purpose
    /// through the policy like a profile.
    func groupRoute(_ call: RouteCall) {
        guard let text = call.parameters["groupId"].flatMap(HTTPRequest.percentDecoded), let group = Identifier(kind: .groupId, value: text)
        else {
            return call.respond(.error(400, code: "invalid_identifier", message: "a group id is 1 to 255 bytes without control characters"))
        }
        afterAcknowledgedWrites(respond: call.respond) { [self] respond in
            read(group, "", call.request, call.request.queryItems, call.caller, respond: respond)
        }
    }

    private func perform(
        _ action: ProfileAction, _ identifier: Identifier, _ request: HTTPRequest, _ query: [String: String], _ principal: Principal,
        _ parameters: RouteTable<NodeRoute>.Parameters, respond: @escaping Respond
    ) {
        if settings.scopedSite && action.reads && !heldHere(identifier) { return forwardToCore(request, respond: respond) }
        switch action {
        case .read(let resource): read(identifier, resource, request, query, principal, respond: respond)
        case .consent: consent(identifier, principal, respond: respond)
        case .setConsent: setConsent(identifier, request, respond: respond)
        case .links: respond(Self.attempt { .json(200, try linksBody(identifier)) })
        case .unlink:
            switch self.identifier(parameters["other"]) {
            case .success(let other): unmerge(identifier, other, respond: respond)
            case .failure(let refusal): respond(refusal.response)
            }
        case .erase: erase(identifier, respond: respond)
        case .restrict(let on): restrict(identifier, on, respond: respond)
        case .export: exportSubject(identifier, principal, respond: respond)
        case .audit: auditTrail(identifier, query, respond: respond)
        }
    }

    // MARK: - Reads

    /// Whether this node holds a profile for `identifier`. A store that fails to answer says yes:
    /// the read that follows reports the failure as it would anywhere.
    private func heldHere(_ identifier: Identifier) -> Bool {
        do { return try store.view(of: identifier) != nil } catch { return true }
    }

    /// A scoped site asked about a customer it does not hold: the read goes to a core node that
    /// answers (with the caller's credentials; the core decides and audits it), else 503
    /// `not_held_here`. A forwarded request is never forwarded again.
    private func forwardToCore(_ request: HTTPRequest, respond: @escaping Respond) {
        let cores = (replication?.members ?? []).filter { $0.role == .core && $0.holdsEverything && $0.status == .alive && !$0.api.isEmpty }
        guard request.header(Self.forwardedHeader) == nil, let core = cores.min(by: { $0.name < $1.name }) else {
            return respond(Self.notHeldHere)
        }
        let headers = request.headers.filter { $0.hasName("authorization") } + [HTTPHeader(Self.forwardedHeader, settings.nodeName)]
        host.forward(to: core.api, request.method, request.target, headers: headers, body: request.body, timeoutMillis: 5_000) { result in
            switch result {
            case .success(var answer):
                answer.headers.append(HTTPHeader("Kith-Served-By", core.name))
                respond(answer)
            case .failure: respond(Self.notHeldHere)
            }
        }
    }

    static let forwardedHeader = "Kith-Forwarded-By"
    static let notHeldHere = HTTPResponse.error(
        503, code: "not_held_here",
        message: "this site holds only the customers of its scope, and no core node answered for this one; retry when the site is online")

    /// A read for a purpose: the profile as the policy and the customer's consent let this
    /// principal see it, recorded in the audit.
    private func read(
        _ identifier: Identifier, _ resource: String, _ request: HTTPRequest, _ query: [String: String], _ principal: Principal, respond: Respond
    ) {
        let purpose: String
        do {
            purpose = try ReadDecision.purpose(policy: policy, principal: principal, requested: query["purpose"])
        } catch {
            return respond(Self.refusal(error))
        }
        respond(
            Self.attempt {
                guard let view = try readableView(of: identifier) else { return Self.notFound }
                let consent = ConsentState(view, vocabulary: policy.consentVocabulary)
                if !consent.unmapped.isEmpty { metrics.unmappedConsentReads.wrappingAdd(1, ordering: .relaxed) }
                let decision = try ReadDecision(policy: policy, principal: principal, requestedPurpose: purpose, consent: consent)
                var renderer = PolicyRenderer(decision: decision)
                let body: [UInt8]
                switch resource {
                case "traits": body = renderer.traitsResource(view)
                case "identifiers": body = renderer.identifiersResource(view.members)
                case "events": body = try eventsPage(identifier, query, &renderer)
                default: body = renderer.profile(view)
                }
                try recordRead(principal, purpose, resource.isEmpty ? "profile" : resource, view.members, renderer.outcome)
                return Self.tagged(body, request)
            })
    }

    /// `?limit=1..200&cursor=…`: a page of events, newest first.
    private func eventsPage(_ identifier: Identifier, _ query: [String: String], _ renderer: inout PolicyRenderer) throws -> [UInt8] {
        let limit =
            try query["limit"].map { text -> Int in
                guard let value = Int(text), (1...200).contains(value) else { throw QueryError(message: "limit must be 1 to 200") }
                return value
            } ?? 10
        let cursor = try query["cursor"].map { text -> EventCursor in
            guard let cursor = EventCursor(token: text) else { throw QueryError(message: "cursor is not one this API returned") }
            return cursor
        }
        let page = try store.events(of: identifier, before: cursor, limit: limit)
        // A page may come back short by the events expired but not yet swept; `next` goes on.
        return renderer.eventsResource(policy.retention.unexpired(page.events, now: host.wallMillis())) { object in
            object.member("cursor") { writer in
                writer.writeObject { c in
                    if let next = page.next { c.member("next", string: next.token) } else { c.member("next", .null) }
                }
            }
        }
    }

    /// The view of `identifier` as reads show it now (`readable`). Without retention rules that is
    /// the stored encoding as it is, rendered without decoding it.
    private func readableView(of identifier: Identifier) throws -> EncodedProfileView? {
        guard policy.retention.isEmpty else { return try store.view(of: identifier).map { EncodedProfileView(encoding: readable($0)) } }
        return try store.encodedView(of: identifier)
    }

    /// `view` as reads show it now: without what the retention rules say has expired, whether or
    /// not the background sweep has dropped it yet (`RetentionRules.unexpired`).
    func readable(_ view: ProfileView) -> ProfileView {
        // No rules, nothing expires: the view as it is, not a copy of it.
        guard !policy.retention.isEmpty else { return view }
        var view = view
        view.head = policy.retention.unexpired(view.head, now: host.wallMillis())
        return view
    }

    /// A read of a whole resource without a purpose (the privacy role's consent and export
    /// views), recorded as returning that resource.
    private func recordWholeRead(_ principal: Principal, _ resource: String, _ members: [Identifier]) throws {
        var outcome = ReadOutcome()
        outcome.returned = [resource]
        try recordRead(principal, "", resource, members, outcome)
    }

    func recordRead(_ principal: Principal, _ purpose: String, _ resource: String, _ members: [Identifier], _ outcome: ReadOutcome) throws {
        try audit.record(
            AuditRecord(
                time: host.wallMillis(), principal: principal.name, purpose: purpose, node: settings.nodeName, resource: resource,
                subjects: members.map(settings.subjectHasher.forgetKeyBytes(for:)), outcome: outcome))
    }

    /// The body with a strong ETag over exactly these bytes (so it can only say what the body
    /// says); `If-None-Match` with the same tag gets 304.
    static func tagged(_ body: [UInt8], _ request: HTTPRequest) -> HTTPResponse {
        let tag = "\"" + Crypto.hex(Array(Crypto.sha256(body).prefix(12))) + "\""
        if request.header("if-none-match") == tag { return HTTPResponse(status: 304, headers: [HTTPHeader("ETag", tag)]) }
        var response = HTTPResponse.json(200, body)
        response.headers.append(HTTPHeader("ETag", tag))
        return response
    }

    static func refusal(_ refusal: ReadRefusal) -> HTTPResponse {
        switch refusal {
        case .purposeRequired:
            .error(400, code: "purpose_required", message: "this token may read for several purposes: name one with ?purpose=")
        case .unknownPurpose(let name): .error(400, code: "unknown_purpose", message: "the policy has no purpose \"\(name)\"")
        case .purposeNotHeld(let name): .error(403, code: "purpose_not_permitted", message: "this token may not read for \"\(name)\"")
        }
    }

    static let notFound = HTTPResponse.error(404, code: "not_found", message: "no profile has that identifier")

    /// Runs a storage operation, mapping its failures to responses that name no data.
    static func attempt(_ body: () throws -> HTTPResponse) -> HTTPResponse {
        do {
            return try body()
        } catch let error as QueryError {
            return .error(400, code: "invalid_query", message: error.message)
        } catch is AuditUnavailable {
            return .error(503, code: "audit_unavailable", message: "reads cannot be recorded in the audit now, so none are served; retry")
        } catch {
            return .error(500, code: "storage_error", message: "the profile could not be read")
        }
    }

    // MARK: - Consent and restriction

    /// The customer's consent decisions with times and sources as they came, each policy
    /// category's decision and the name it came under, the names the policy does not map, the
    /// restriction, and what each category means in IAB TCF and Google Consent Mode. Needs no
    /// purpose: a service must be able to learn what it may do.
    private func consent(_ identifier: Identifier, _ principal: Principal, respond: Respond) {
        respond(
            Self.attempt {
                guard let view = try store.view(of: identifier) else { return Self.notFound }
                try recordWholeRead(principal, "consent", view.members)
                return .json(
                    200,
                    Self.object { object in
                        object.member("consent") { $0.writeConsent(view.head) }
                        let resolved = ConsentState(view.head, vocabulary: policy.consentVocabulary)
                        object.member("categories") { writer in
                            writer.writeObject { categories in
                                for name in policy.consentCategories.keys.sorted() {
                                    categories.member(name) { w in
                                        w.writeObject { c in
                                            switch resolved.decisions[name] {
                                            case true?: c.member("status", string: "granted")
                                            case false?: c.member("status", string: "denied")
                                            case nil: c.member("status", string: "unknown")
                                            }
                                            if let by = resolved.decidedBy[name] { c.member("decidedBy", string: by) }
                                        }
                                    }
                                }
                            }
                        }
                        object.member("unmapped") { $0.writeArray(resolved.unmapped) { $0.write(string: $1) } }
                        object.member("restricted") { writer in Self.writeRestriction(view.head, &writer) }
                        object.member("mappings") { writer in
                            writer.writeObject { mappings in
                                for name in policy.consentCategories.keys.sorted() {
                                    let mapping = policy.consentCategories[name]!
                                    mappings.member(name) { w in
                                        w.writeObject { m in
                                            m.member("aliases") { $0.writeArray(mapping.aliases) { $0.write(string: $1) } }
                                            m.member("tcf") { $0.writeArray(mapping.tcfPurposes) { $0.write(integer: Int64($1)) } }
                                            m.member("googleConsentMode") { $0.writeArray(mapping.googleConsentMode) { $0.write(string: $1) } }
                                        }
                                    }
                                }
                            }
                        }
                    })
            })
    }

    static func writeRestriction(_ head: SourceHead, _ writer: inout JSONWriter) {
        guard let register = head.consent[ConsentDecision.processingCategory] else { return writer.write(.bool(false)) }
        writer.writeObject { o in
            o.member("restricted") { $0.write(.bool(!register.granted)) }
            o.member("time") { $0.write(time: register.stamp.time) }
        }
    }

    /// `{"categoryPreferences": {"analytics": true, ...}, "source": "…", "timestamp": "…"}`:
    /// recorded as Segment's "Segment Consent Preference Updated" event, so it is durable,
    /// replicated and ahead of any backlog exactly like consent from a touchpoint.
    private func setConsent(_ identifier: Identifier, _ request: HTTPRequest, respond: @escaping Respond) {
        // A body that is not JSON is answered 400 below, as one without preferences.
        guard let body = try? JSONParser.parse(request.body), case .object(let preferences)? = body["categoryPreferences"],
            !preferences.isEmpty
        else {
            return respond(.error(400, code: "invalid_request", message: "send {\"categoryPreferences\": {\"CATEGORY\": true or false, ...}}"))
        }
        var decisions: [ConsentDecision] = []
        for member in preferences.members {
            guard case .bool(let granted) = member.value, !member.key.isEmpty, member.key.utf8.count <= 100,
                !member.key.hasPrefix(ConsentDecision.reservedPrefix)
            else {
                return respond(
                    .error(400, code: "invalid_request", message: "each category needs true or false; names are 1 to 100 bytes and not kith:"))
            }
            decisions.append(ConsentDecision(category: member.key, granted: granted))
        }
        let now = changeTime(for: identifier)
        var time = now
        if let text = body["timestamp"] {
            guard let parsed = text.stringValue.flatMap(ISO8601.parseMillis) else {
                return respond(.error(400, code: "invalid_request", message: "timestamp must be an ISO 8601 time"))
            }
            time = parsed
        }
        let source = body["source"]?.stringValue.map { String($0.prefix(64)) } ?? "privacy-api"
        let properties = JSONObject([JSONObject.Member("categoryPreferences", .object(preferences))])
        guard let messageId = Self.newMessageId("consent-", respond: respond) else { return }
        let times = MessageTimes(timestamp: time, originalTimestamp: nil, sentAt: nil, receivedAt: now)
        let event = EventRecord(
            messageId: messageId, type: .track, name: "Segment Consent Preference Updated", time: times.eventTime, channel: source,
            properties: RawJSON(.object(properties)), clientTimestamp: times.clientTimestampAhead)
        let delta = ProfileDelta(
            messageId: messageId, type: .track, subject: identifier, channel: source, times: times, consent: decisions, event: event)
        commit(delta, answer: Self.object { $0.member("success") { $0.write(.bool(true)) } }, respond: respond)
    }

    /// A fresh message id for a change the node makes itself: `prefix` and 96 random bits. A
    /// constant id would make every later change of the customer a duplicate answered 200, so
    /// without random bytes the request is answered 503 instead (nil returned).
    static func newMessageId(_ prefix: String, random: () throws -> [UInt8] = { try Crypto.randomBytes(12) }, respond: Respond) -> String? {
        do {
            return prefix + Crypto.hex(try random())
        } catch {
            respond(.error(503, code: "unavailable", message: "no random bytes for a message id (\(error)); retry"))
            return nil
        }
    }

    /// Restriction of processing (Art. 18) on or off: a consent register of Kith's own.
    private func restrict(_ identifier: Identifier, _ on: Bool, respond: @escaping Respond) {
        let now = changeTime(for: identifier)
        guard let messageId = Self.newMessageId(on ? "restrict-" : "unrestrict-", respond: respond) else { return }
        let delta = ProfileDelta(
            messageId: messageId, type: .identify, subject: identifier, channel: "privacy-api",
            times: MessageTimes(timestamp: now, originalTimestamp: nil, sentAt: nil, receivedAt: now),
            consent: [ConsentDecision(category: ConsentDecision.processingCategory, granted: !on)])
        commit(delta, answer: Self.object { $0.member("restricted") { $0.write(.bool(on)) } }, respond: respond)
    }

    private func commit(_ delta: ProfileDelta, answer: [UInt8], respond: @escaping Respond) {
        if let refusal = clockRefusal() { return respond(refusal) }
        writer.submit([delta]) { [self] result in
            let respond = withSessionToken(VersionVector(), ownSequence: try? result.get().ownSequence, respond)  // failed: no sequence to add
            switch result {
            case .success: respond(.json(200, answer))
            case .failure: respond(.error(503, code: "unavailable", message: "the change was not stored; retry"))
            }
        }
    }

    // MARK: - Erasure, export, audit

    /// Erases the whole person (Art. 17) on this node and, through replication, everywhere.
    ///
    /// Accepted at this node's hybrid-clock time, and only while its clock is within the bound.
    /// The answer waits until this node's clock has passed the erasure's boundary by twice the
    /// bound (`ClockCheck.erasureAcknowledgement`): then any node within the bound dates what it
    /// accepts afterwards after the boundary, so no write acknowledged after this answer, with
    /// a time after it, is ever dropped (docs/replication.md, "Erasures and clocks").
    private func erase(_ identifier: Identifier, respond: @escaping Respond) {
        if let refusal = clockRefusal() { return respond(refusal) }
        let acceptedAt = clock.withLock { $0.tick(physicalMillis: host.wallMillis()).wallMillis }
        let check = clockCheck
        // A job of the one writer, queued behind the messages accepted before it.
        let queued = writer.perform { [self, store, log, host] in
            let erasure: Erasure
            do {
                erasure = try store.erase(identifier, requestedAt: acceptedAt)
            } catch {
                return respond(.error(503, code: "storage_error", message: "the erasure was not stored; retry"))
            }
            committedOutsideGroup()
            let answer = HTTPResponse.json(
                200,
                Self.object { o in
                    o.member("erased") { $0.write(.bool(true)) }
                    o.member("identifiers", integer: Int64(erasure.members.count))
                    o.member("boundary") { $0.write(time: erasure.boundary) }
                })
            var fields: [(String, JSONValue)] = [
                ("identifiers", .number(JSONNumber(Int64(erasure.members.count)))), ("boundary_ms", .number(JSONNumber(erasure.boundary))),
            ]
            guard let check else {
                log(.info, "profile erased", fields)
                return respond(answer)
            }
            let wait = check.erasureAcknowledgement(boundary: erasure.boundary, acceptedAt: acceptedAt) - host.wallMillis()
            fields.append(("wait_ms", .number(JSONNumber(max(0, wait)))))
            if check.isBoundaryAhead(erasure.boundary, acceptedAt: acceptedAt) {
                log(
                    .error,
                    "erasure boundary is ahead of this node's clock: data held about the person was dated by a clock out of bound, and writes dated before the boundary are dropped",
                    fields)
            } else {
                log(.info, "profile erased", fields)
            }
            guard wait > 0 else { return respond(answer) }
            // A clock check exists only with replication, whose timer thread answers on time.
            guard let replication else { return respond(answer) }
            let timed = replication.after(millis: Int(wait)) { respond(answer) }
            if !timed {
                // Stopping: the erasure is stored, but it may not be acknowledged before its wait.
                respond(
                    .error(503, code: "unavailable", message: "the node is stopping: the erasure is stored; repeat it at another node to be answered")
                )
            }
        }
        if !queued { respond(.error(503, code: "unavailable", message: "the node is shutting down; retry at another")) }
    }

    /// Everything held about the customer (Art. 15 and 20): the full profile, links, every
    /// event, consent with its history, restriction, and this node's read audit.
    private func exportSubject(_ identifier: Identifier, _ principal: Principal, respond: Respond) {
        respond(
            Self.attempt {
                guard let view = try store.view(of: identifier) else { return Self.notFound }
                var events: [EventRecord] = []
                var cursor: EventCursor?
                repeat {
                    let page = try store.events(of: identifier, before: cursor, limit: 1_000)
                    events += page.events
                    cursor = page.next
                } while cursor != nil
                let reads = try audit.records(about: view.members.map(settings.subjectHasher.forgetKeyBytes(for:)), limit: 100_000)
                let history = try store.consentHistory(of: identifier)
                let links = try linksBody(identifier)
                try recordWholeRead(principal, "export", view.members)
                return .json(
                    200,
                    Self.object { o in
                        o.member("exportedAt") { $0.write(time: host.wallMillis()) }
                        o.member("node", string: settings.nodeName)
                        o.member("profile") { $0.raw(bytes: view.jsonBytes) }
                        o.member("restricted") { writer in Self.writeRestriction(view.head, &writer) }
                        o.member("consentHistory") { w in w.writeArray(history) { Self.writeConsentChange($1, &$0) } }
                        o.member("events") { w in w.writeArray(events) { $0.writeEvent($1) } }
                        o.member("links") { $0.raw(bytes: links) }
                        o.member("reads") { w in w.writeArray(reads) { Self.writeAuditRecord($1, &$0) } }
                        o.member("retention") { Self.writeRetention(view, events, history, settings.policy.retention, &$0) }
                    })
            })
    }

    /// For every trait, event and consent-history record held: the purpose that keeps it, for
    /// how long, and when it expires (a datum no rule names is kept as long as the profile:
    /// `"kept": "no rule"`). A record of the consent history goes with the message that
    /// carried it: an event's by its name's rule, an identify's by the `messages` rule.
    static func writeRetention(
        _ view: ProfileView, _ events: [EventRecord], _ history: [ConsentChange], _ rules: RetentionRules, _ writer: inout JSONWriter
    ) {
        func keep(_ keep: RetentionRules.Keep?, expiresAt: Int64?, into w: inout JSONWriter) {
            w.writeObject { o in
                guard let keep, let expiresAt else { return o.member("kept", string: "no rule") }
                o.member("purpose", string: keep.purpose)
                o.member("days") { $0.write(.number(JSONNumber(keep.millis / 86_400_000))) }
                o.member("expiresAt") { $0.write(time: expiresAt) }
            }
        }
        writer.writeObject { o in
            o.member("traits") { w in
                w.writeObject { traits in
                    for (name, register) in view.head.traits.pairs {
                        traits.member(name) {
                            keep(rules.keep(forTrait: name), expiresAt: rules.expiry(ofTrait: name, updatedAt: register.stamp.time), into: &$0)
                        }
                    }
                }
            }
            o.member("events") { w in
                w.writeObject { byMessage in
                    for event in events {
                        byMessage.member(event.messageId) {
                            keep(rules.keep(forEvent: event.name), expiresAt: rules.expiry(ofEvent: event.name, at: event.time), into: &$0)
                        }
                    }
                }
            }
            o.member("consentHistory") { w in
                w.writeObject { byMessage in
                    for change in history {
                        byMessage.member(change.messageId) {
                            keep(rules.keep(forMessage: change.message), expiresAt: rules.expiry(ofMessage: change.message), into: &$0)
                        }
                    }
                }
            }
        }
    }

    /// `?limit=1..10000`: this node's audit of reads of the customer, newest first.
    private func auditTrail(_ identifier: Identifier, _ query: [String: String], respond: Respond) {
        let limit = query["limit"].flatMap(Int.init) ?? 1_000
        guard (1...10_000).contains(limit) else { return respond(.error(400, code: "invalid_query", message: "limit must be 1 to 10000")) }
        respond(
            Self.attempt {
                // An erased customer has no view left, but the audit still answers for the identifier.
                let members = try store.view(of: identifier)?.members ?? [identifier]
                let reads = try audit.records(about: members.map(settings.subjectHasher.forgetKeyBytes(for:)), limit: limit)
                return .json(
                    200,
                    Self.object { o in
                        o.member("node", string: settings.nodeName)
                        o.member("reads") { w in w.writeArray(reads) { Self.writeAuditRecord($1, &$0) } }
                    })
            })
    }

    /// `{"time", "messageId", "identifier", "source", "decisions": {"CATEGORY": true|false}}`.
    static func writeConsentChange(_ change: ConsentChange, _ writer: inout JSONWriter) {
        writer.writeObject { o in
            o.member("time") { $0.write(time: change.time) }
            o.member("messageId", string: change.messageId)
            o.member("identifier", string: change.identifier.description)
            o.member("source", string: change.source)
            o.member("decisions") { w in
                w.writeObject { d in
                    for decision in change.decisions { d.member(decision.category) { $0.write(.bool(decision.granted)) } }
                }
            }
        }
    }

    static func writeAuditRecord(_ record: AuditRecord, _ writer: inout JSONWriter) {
        writer.writeObject { o in
            o.member("time") { $0.write(time: record.time) }
            o.member("node", string: record.node)
            o.member("principal", string: record.principal)
            o.member("purpose", string: record.purpose)
            o.member("resource", string: record.resource)
            o.member("returned") { $0.writeArray(record.returned) { $0.write(string: $1) } }
            o.member("masked") { $0.writeArray(record.masked) { $0.write(string: $1) } }
            o.member("withheld") { w in
                w.writeArray(record.withheld) { w, item in
                    w.writeObject { i in
                        i.member("field", string: item.field)
                        i.member("reason", string: item.reason.rawValue)
                    }
                }
            }
        }
    }

    // MARK: - Links

    private func linksBody(_ identifier: Identifier) throws -> [UInt8] {
        let links = try store.links(of: identifier)
        return Self.object { object in
            object.member("links") { writer in
                writer.writeArray(links) { writer, link in
                    writer.writeObject { l in
                        l.member("from", string: link.from.description)
                        l.member("to", string: link.to.description)
                        l.member("active") { $0.write(.bool(link.active)) }
                        // Whether the profile follows the link, and the identity rule when it does not.
                        l.member("kept") { $0.write(.bool(link.active && link.refusedBy == nil)) }
                        if let refusal = link.refusedBy { l.member("rule", string: refusal.description) }
                        if let first = link.firstAdd { l.member("firstSeen") { $0.write(time: first.time) } }
                        if let last = link.lastAdd { l.member("lastSeen") { $0.write(time: last.time) } }
                        if let removed = link.removedAt { l.member("removedAt") { $0.write(time: removed.time) } }
                    }
                }
            }
        }
    }

    /// Unmerge: remove the link as of now (the node's hybrid clock), a job of the one writer.
    private func unmerge(_ a: Identifier, _ b: Identifier, respond: @escaping @Sendable (HTTPResponse) -> Void) {
        if let refusal = clockRefusal() { return respond(refusal) }
        let now = host.wallMillis()
        let stamp = clock.withLock { clock -> LWWStamp in
            let time = clock.tick(physicalMillis: now)
            return LWWStamp(time: time.wallMillis, tiebreak: "unlink:\(time.node):\(time.logical)")
        }
        let queued = writer.perform { [self, store] in
            do {
                guard try store.links(of: a).contains(where: { Set([$0.from, $0.to]) == Set([a, b]) }) else {
                    return respond(.error(404, code: "not_found", message: "those identifiers are not linked"))
                }
                try store.removeLink(a, b, stamp: stamp)
                // Pushed to peers now, as the group writer's writes are.
                committedOutsideGroup()
                respond(.json(200, Array(#"{"unlinked":true}"#.utf8)))
            } catch {
                respond(.error(503, code: "storage_error", message: "the link could not be removed"))
            }
        }
        if !queued { respond(.error(503, code: "unavailable", message: "the node is shutting down; retry at another")) }
    }

}
