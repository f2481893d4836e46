import KithCRDT
import KithCluster
import KithHTTP
import KithJSON
import KithPolicy
import KithProfile

/// `/v1/subscriptions`: webhook subscriptions (admin). Definitions are cluster settings, so a
/// subscription made at one node is delivered by whichever core node owns it, and survives
/// restarts; status shows the replicated progress, and the delivering node's own counts when
/// asked there (docs/feed.md, "Webhooks").
extension NodeAPI {
    /// `PUT /v1/subscriptions/{name}` `{"url", "purpose", "view", "events", "traits", "kinds",
    /// "since", "rotateSecret"}`: creates (201) or replaces (200) it; the answer holds its secret.
    func putSubscription(_ call: RouteCall) {
        guard let name = subscriptionName(call) else { return }
        guard let body = try? JSONParser.parse(call.request.body), case .object = body else {
            return call.respond(.error(400, code: "invalid_body", message: "the body must be a JSON object"))
        }
        func refuse(_ message: String) { call.respond(.error(400, code: "invalid_subscription", message: message)) }
        guard let urlText = body["url"]?.stringValue else { return refuse("url is required") }
        let url: WebhookURL
        do { url = try WebhookURL(parsing: urlText) } catch { return refuse(error.reason) }
        guard let purpose = body["purpose"]?.stringValue else { return refuse("purpose is required") }
        guard policy.purposes[purpose] != nil else {
            return refuse(
                "the policy has no purpose \"\(purpose.prefix(64))\"; the purposes are " + policy.purposes.keys.sorted().joined(separator: ", "))
        }
        let full: Bool
        switch body["view"]?.stringValue {
        case nil, "changes": full = false
        case "full": full = true
        default: return refuse("view must be changes or full")
        }
        func names(_ key: String) -> Result<Set<String>?, WalkRefusal> {
            guard let value = body[key] else { return .success(nil) }
            guard let items = value.arrayValue?.compactMap(\.stringValue), items.count == value.arrayValue?.count, !items.isEmpty else {
                return .failure(
                    WalkRefusal(response: .error(400, code: "invalid_subscription", message: "\(key) must be a non-empty array of names")))
            }
            return .success(Set(items))
        }
        var filter = FeedFilter()
        switch (names("events"), names("traits"), names("kinds")) {
        case (.success(let events), .success(let traits), .success(let kinds)):
            filter.events = events
            filter.traits = traits
            if let kinds {
                let known = settings.identifierSources.kinds
                var found: Set<IdentifierKind> = []
                for kind in kinds {
                    guard let parsed = IdentifierKind(name: kind), known.contains(parsed) else {
                        return refuse("\"\(kind.prefix(64))\" is not an identifier kind; the kinds are " + known.map(\.name).joined(separator: ", "))
                    }
                    found.insert(parsed)
                }
                filter.kinds = found
            }
        case (.failure(let refusal), _, _), (_, .failure(let refusal), _), (_, _, .failure(let refusal)):
            return call.respond(refusal.response)
        }
        let existing: Subscription?
        do { existing = try liveSubscriptions().first { $0.name == name } } catch {
            return call.respond(.error(500, code: "storage_error", message: "the subscriptions could not be read"))
        }
        let start: FeedToken
        switch body["since"]?.stringValue {
        case nil: start = existing?.start ?? FeedToken(versions: VersionVector(), node: origin, position: 0)
        case "0": start = FeedToken(versions: VersionVector(), node: origin, position: 0)
        case "now":
            do { start = try feedTokenNow() } catch {
                return call.respond(.error(500, code: "storage_error", message: "the change log could not be read"))
            }
        case let text?:
            guard let token = FeedTokenText.parse(text) else { return refuse("since must be 0, now or a token the feed returned") }
            start = token
        }
        // A new subscription starts now unless told otherwise; an update keeps its place.
        let startsNow = existing == nil && body["since"] == nil
        let rotate = body["rotateSecret"] == .bool(true)
        let subscription = Subscription(
            name: name, url: url, purpose: purpose, filter: filter, full: full,
            generation: (existing?.generation ?? 0) + (existing == nil || rotate ? 1 : 0),
            start: startsNow ? (try? feedTokenNow()) ?? start : start)  // unreadable log: from its start
        let secret = settings.webhookSigner.secret(for: name, generation: subscription.generation)
        let created = existing == nil
        let queued = writeSetting(Subscription.settingPrefix + name, JSONWriter.bytes(subscription.json)) { written in
            guard written else { return call.respond(.error(503, code: "storage_error", message: "the subscription was not stored; retry")) }
            var answer = subscription.json
            if case .object(var object) = answer {
                object.members.append(.init("secret", .string(secret)))
                answer = .object(object)
            }
            call.respond(.json(created ? 201 : 200, JSONWriter.bytes(answer)))
        }
        if !queued { call.respond(.error(503, code: "unavailable", message: "the node is shutting down; retry at another")) }
    }

    /// `GET /v1/subscriptions`: every subscription with its progress.
    func listSubscriptions(_ call: RouteCall) {
        call.respond(
            Self.attempt {
                let statuses = try liveSubscriptions().map { try subscriptionStatus($0, full: false) }
                return .json(200, JSONWriter.bytes(.object(JSONObject([.init("subscriptions", .array(statuses))]))))
            })
    }

    /// `GET /v1/subscriptions/{name}`: one, with its dead letters and its secret.
    func getSubscription(_ call: RouteCall) {
        guard let name = subscriptionName(call) else { return }
        call.respond(
            Self.attempt {
                guard let subscription = try liveSubscriptions().first(where: { $0.name == name }) else { return Self.noSubscription }
                return .json(200, JSONWriter.bytes(try subscriptionStatus(subscription, full: true)))
            })
    }

    /// `DELETE /v1/subscriptions/{name}`: deliveries stop wherever they run.
    func deleteSubscription(_ call: RouteCall) {
        guard let name = subscriptionName(call) else { return }
        do {
            guard try liveSubscriptions().contains(where: { $0.name == name }) else { return call.respond(Self.noSubscription) }
        } catch {
            return call.respond(.error(500, code: "storage_error", message: "the subscriptions could not be read"))
        }
        let queued = writeSetting(Subscription.settingPrefix + name, []) { written in
            call.respond(
                written
                    ? .json(200, Array(#"{"deleted":true}"#.utf8))
                    : .error(503, code: "storage_error", message: "the subscription was not removed; retry"))
        }
        if !queued { call.respond(.error(503, code: "unavailable", message: "the node is shutting down; retry at another")) }
    }

    /// `POST /v1/subscriptions/{name}/replay`: its dead letters are delivered again, first.
    func replaySubscription(_ call: RouteCall) {
        guard let name = subscriptionName(call) else { return }
        do {
            guard try liveSubscriptions().contains(where: { $0.name == name }) else { return call.respond(Self.noSubscription) }
        } catch {
            return call.respond(.error(500, code: "storage_error", message: "the subscriptions could not be read"))
        }
        let queued = writeSetting(Subscription.replayPrefix + name, Array("replay".utf8)) { written in
            call.respond(
                written
                    ? .json(202, Array(#"{"replaying":true}"#.utf8)) : .error(503, code: "storage_error", message: "the replay was not stored; retry")
            )
        }
        if !queued { call.respond(.error(503, code: "unavailable", message: "the node is shutting down; retry at another")) }
    }

    static let noSubscription = HTTPResponse.error(404, code: "not_found", message: "no subscription has that name")

    private func subscriptionName(_ call: RouteCall) -> String? {
        guard let name = call.parameters["name"].flatMap(HTTPRequest.percentDecoded), Subscription.isValidName(name) else {
            call.respond(
                .error(400, code: "invalid_name", message: "a subscription name is 1 to 64 of a-z, 0-9, _ and -, starting with a letter or digit"))
            return nil
        }
        return name
    }

    /// A subscription as status shows it: its definition, which node delivers it, how far it
    /// got, its dead letters, and — at the delivering node — failures and lag.
    private func subscriptionStatus(_ subscription: Subscription, full: Bool) throws -> JSONValue {
        guard case .object(var object) = subscription.json else { preconditionFailure("a subscription's JSON is an object") }
        let owner = subscriptionOwner(subscription.name)
        let ownerName = owner == origin ? settings.nodeName : replication?.members.first { $0.id == owner }?.name
        object.members.append(.init("deliveredBy", ownerName.map { .string($0) } ?? .null))
        let run = webhookRuns.withLock { $0[subscription.name] }
        let progress = try run?.progress ?? storedProgress(subscription.name) ?? SubscriptionProgress(token: subscription.start)
        object.members.append(.init("delivered", .number(JSONNumber(Int64(progress.delivered)))))
        object.members.append(.init("deadLetters", .number(JSONNumber(Int64(progress.deadLetters.count + (run?.replaying.count ?? 0))))))
        if let run {
            object.members.append(.init("failures", .number(JSONNumber(Int64(run.failures)))))
            object.members.append(.init("lastError", run.lastError.map { .string($0) } ?? .null))
            object.members.append(.init("lagChanges", .number(JSONNumber(Int64(try webhookLag(progress.token))))))
        }
        if full {
            guard case .object(let progressObject) = progress.json else { preconditionFailure("progress JSON is an object") }
            object.members.append(.init("deadLetterList", progressObject["deadLetters"] ?? .array([])))
            object.members.append(.init("position", .string(FeedTokenText.text(progress.token))))
            object.members.append(
                .init("secret", .string(settings.webhookSigner.secret(for: subscription.name, generation: subscription.generation))))
        }
        return .object(object)
    }

    /// Entries of this node's log after `token`'s place in it (0 when the token is another node's).
    func webhookLag(_ token: FeedToken) throws -> Int {
        guard token.node == origin else { return 0 }
        let durable = try store.durableLogSequence()
        return Int(clamping: durable > token.position ? durable - token.position : 0)
    }
}
