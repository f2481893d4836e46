import KithCRDT
import KithCluster
import KithHTTP
import KithJSON
import KithPolicy
import KithProfile
import Synchronization

/// Delivery outcomes since the node started (metrics; no identifiers).
struct WebhookTotals: Sendable {
    var delivered = 0
    var failed = 0
    var deadLettered = 0
}

/// Webhook deliveries (docs/feed.md, "Webhooks"): every `webhookTickMillis` the node reads the
/// subscriptions, delivers those it owns (`SubscriptionOwnership`) one batch at a time in feed
/// order — each record through the read policy for the subscription's purpose and the read
/// audit, as a feed read — signed, retried with backoff (`WebhookRetryPolicy`), parked as dead
/// letters after the bound, and writes its progress as a replicated setting at most once a
/// second, so that the next owner goes on from there (at least once).
extension NodeAPI {
    static let webhookTickMillis = 100
    static let webhookBatch = 100
    static let webhookTimeoutMillis = 5_000
    static let webhookSaveMillis: Int64 = 1_000
    static let webhookReassertMillis: Int64 = 600_000

    /// Starts the deliveries' timer (a node calls it once it serves).
    public func startWebhooks() { scheduleWebhookTick() }

    private func scheduleWebhookTick() {
        let scheduled = host.after(millis: Self.webhookTickMillis) { [self] in
            host.background {
                guard !self.stopping.load(ordering: .relaxed) else { return }
                self.webhookTick()
                self.scheduleWebhookTick()
            }
        }
        _ = scheduled  // false: the node is stopping, and deliveries stop with it
    }

    /// One pass over the subscriptions.
    func webhookTick() {
        let subscriptions: [Subscription]
        let replays: [String: Int64]
        do {
            subscriptions = try liveSubscriptions()
            replays = Dictionary(
                try store.settings(prefix: Subscription.replayPrefix).map {
                    (String($0.name.dropFirst(Subscription.replayPrefix.count)), $0.stamp.time)
                }
            ) { a, _ in a }
        } catch {
            return log(.error, "webhook subscriptions could not be read", [("error", .string("\(error)"))])
        }
        let owned = subscriptions.filter { subscriptionOwner($0.name) == origin }
        webhookRuns.withLock { runs in
            for name in runs.keys where !owned.contains(where: { $0.name == name }) { runs[name] = nil }
        }
        for subscription in owned { step(subscription, replayRequested: replays[subscription.name]) }
    }

    /// The subscriptions in force (removed ones are tombstones, left out).
    func liveSubscriptions() throws -> [Subscription] {
        try store.settings(prefix: Subscription.settingPrefix).compactMap { setting in
            guard !setting.value.isEmpty else { return nil }
            // A setting this version cannot read is left alone (a newer node wrote it).
            return (try? JSONParser.parse(setting.value)).flatMap(Subscription.init(stored:))
        }
    }

    /// The member that delivers `name` (this node, when it has no peers).
    func subscriptionOwner(_ name: String) -> UInt64? {
        guard let replication else { return origin }
        return SubscriptionOwnership.owner(of: name, among: replication.members)
    }

    /// What the owner does for one subscription now: nothing while a delivery is out or the
    /// backoff runs, else the next batch (dead letters being replayed first), or parks the batch.
    private func step(_ subscription: Subscription, replayRequested: Int64?) {
        let now = host.monotonicMillis()
        guard
            var run = webhookRuns.withLock({ runs -> WebhookRun? in
                if runs[subscription.name] == nil { runs[subscription.name] = loadRun(subscription) }
                guard let run = runs[subscription.name], !run.inFlight else { return nil }
                return run
            })
        else { return }
        if let requested = replayRequested { run.replayRequested(at: requested) }
        // The definition and the progress again, so that a node back from a resync (which
        // brings no settings) knows both should it come to deliver.
        if run.reassertIfDue(now: now, every: Self.webhookReassertMillis) { reassert(subscription.name) }
        let from = run.from
        let request = FeedRequest(
            purpose: subscription.purpose,
            principal: Principal(name: "subscription:\(subscription.name)", role: .reader, purposes: [subscription.purpose]),
            token: from, filter: subscription.filter, limit: Self.webhookBatch, full: subscription.full, waitMillis: 0)
        let decision = settings.webhookRetry.decide(failures: run.failures, lastFailure: run.lastFailure, now: now)
        if case .wait = decision { return save(subscription.name, run, now: now) }
        let page: FeedPage
        let records: [[UInt8]]
        do {
            page = try feedWalk(from: from, request)
            records = decision == .deliver ? try feedRecords(page, request) : []
        } catch is WalkRefusal {
            return skipGap(subscription, run, now: now)
        } catch {
            return log(.error, "a webhook batch could not be read", [("subscription", .string(subscription.name)), ("error", .string("\(error)"))])
        }
        if decision == .deadLetter {
            run.park(through: page.token, records: page.given.count, at: host.wallMillis())
            webhookTotals.withLock { $0.deadLettered += 1 }
            return save(subscription.name, run, now: now, immediately: true)
        }
        guard !records.isEmpty else {
            run.passedOver(to: page.token)
            return save(subscription.name, run, now: now)
        }
        run.inFlight = true
        webhookRuns.withLock { $0[subscription.name] = run }
        send(subscription, records: records, page: page, now: now)
    }

    /// POSTs one batch, signed; its outcome updates the run.
    private func send(_ subscription: Subscription, records: [[UInt8]], page: FeedPage, now: Int64) {
        var writer = JSONWriter(capacity: 128 + records.reduce(0) { $0 + $1.count })
        writer.writeObject { object in
            object.member("subscription", string: subscription.name)
            object.member("changes") { writer in writer.writeArray(records) { $0.raw(bytes: $1) } }
            object.member("next", string: FeedTokenText.text(page.token))
        }
        let body = writer.bytes
        let secret = settings.webhookSigner.secret(for: subscription.name, generation: subscription.generation)
        let headers = [
            HTTPHeader("Content-Type", "application/json"), HTTPHeader("Kith-Subscription", subscription.name),
            HTTPHeader("Kith-Signature", settings.webhookSigner.signature(body, secret: secret, at: host.wallMillis() / 1_000)),
        ]
        host.post(subscription.url, headers: headers, body: body, timeoutMillis: Self.webhookTimeoutMillis) { [self] result in
            let finished = host.monotonicMillis()
            var failure: String?
            switch result {
            case .success(let status) where (200..<300).contains(status): failure = nil
            case .success(let status): failure = "the receiver answered \(status)"
            case .failure(let error): failure = "no answer: \(error)"
            }
            guard
                var run = webhookRuns.withLock({ runs -> WebhookRun? in
                    runs[subscription.name]?.inFlight = false
                    return runs[subscription.name]
                })
            else { return }
            if let failure {
                run.failed(at: finished, error: failure)
                webhookTotals.withLock { $0.failed += 1 }
            } else {
                run.delivered(records: records.count, through: page.token)
                webhookTotals.withLock { $0.delivered += 1 }
            }
            save(subscription.name, run, now: finished)
        }
    }

    /// The log moved past the subscription (its owner was away longer than truncation waits):
    /// the gap is parked as a dead letter, and delivery goes on from now.
    private func skipGap(_ subscription: Subscription, _ run: WebhookRun, now: Int64) {
        var run = run
        do {
            run.skipGap(to: try feedTokenNow(), at: host.wallMillis())
            save(subscription.name, run, now: now, immediately: true)
        } catch {
            log(.error, "a webhook's place could not be moved on", [("subscription", .string(subscription.name)), ("error", .string("\(error)"))])
        }
    }

    /// Keeps `run`, and writes its progress as a setting when a second has passed since the
    /// last write (or `immediately`): through the one writer, replicated like any change.
    private func save(_ name: String, _ run: WebhookRun, now: Int64, immediately: Bool = false) {
        var run = run
        let due = run.takeSave(now: now, every: Self.webhookSaveMillis, immediately: immediately)
        webhookRuns.withLock { runs in
            guard runs[name] != nil else { return }  // no longer this node's to deliver
            runs[name] = run
        }
        guard due else { return }
        writeSetting(Subscription.progressPrefix + name, JSONWriter.bytes(run.progress.json))
    }

    /// The run of a subscription this node has just come to deliver: from the progress its
    /// last owner wrote, or from the subscription's start.
    private func loadRun(_ subscription: Subscription) -> WebhookRun {
        // Unreadable: it starts over from the subscription's start (at least once).
        WebhookRun(progress: (try? storedProgress(subscription.name)) ?? SubscriptionProgress(token: subscription.start))
    }

    /// The progress the deliverer of `name` last wrote, if any (nil too for one this version
    /// cannot read: a newer node wrote it).
    func storedProgress(_ name: String) throws -> SubscriptionProgress? {
        guard let setting = try store.setting(named: Subscription.progressPrefix + name), !setting.value.isEmpty else { return nil }
        return (try? JSONParser.parse(setting.value)).flatMap(SubscriptionProgress.init(stored:))
    }

    /// Writes a subscription's definition again with its own stamp, so that a node back from a
    /// resync (which brings no settings) learns it; a newer one elsewhere is unchanged by it.
    private func reassert(_ name: String) {
        // Unreadable now: written again at the next reassertion.
        guard let setting = try? store.setting(named: Subscription.settingPrefix + name) else { return }
        writeSetting(setting.name, setting.value, stamp: setting.stamp)
    }

    /// Writes a setting on the one writer, stamped by this node's hybrid clock now (or with
    /// `stamp`: a setting written again as it was).
    @discardableResult
    func writeSetting(_ name: String, _ value: [UInt8], stamp: LWWStamp? = nil, then: (@Sendable (Bool) -> Void)? = nil) -> Bool {
        let now = host.wallMillis()
        let stamp =
            stamp
            ?? clock.withLock { clock -> LWWStamp in
                let time = clock.tick(physicalMillis: now)
                return LWWStamp(time: time.wallMillis, tiebreak: "setting:\(time.node):\(time.logical)")
            }
        let queued = writer.perform { [self] in
            do {
                try store.setSetting(name, value, stamp: stamp)
                committedOutsideGroup()
                then?(true)
            } catch {
                log(.error, "a setting could not be written", [("setting", .string(name)), ("error", .string("\(error)"))])
                then?(false)
            }
        }
        if !queued { then?(false) }
        return queued
    }
}

extension NodeAPI {
    /// Deliveries by outcome, and the lag and dead letters of each subscription this node
    /// delivers (labelled by subscription name, an operator's word: never an identifier).
    func webhookMetrics() -> String {
        let totals = webhookTotals.withLock { $0 }
        var text = NodeMetrics.family(
            "kith_webhook_deliveries_total", "counter", "Webhook batches by outcome (a failed attempt is retried until parked).", label: "outcome",
            [("delivered", totals.delivered), ("failed", totals.failed), ("dead_lettered", totals.deadLettered)])
        let runs = webhookRuns.withLock { $0 }.sorted { $0.key < $1.key }
        text += NodeMetrics.family(
            "kith_webhook_lag_changes", "gauge", "Change-log entries after the place a subscription this node delivers has reached.",
            label: "subscription", runs.map { (value: $0.key, count: (try? webhookLag($0.value.progress.token)) ?? 0) })  // unreadable log: 0
        text += NodeMetrics.family(
            "kith_webhook_dead_letters", "gauge", "Parked batches of a subscription this node delivers.", label: "subscription",
            runs.map { (value: $0.key, count: $0.value.progress.deadLetters.count + $0.value.replaying.count) })
        return text
    }
}

extension JSONWriter {
    static func bytes(_ value: JSONValue) -> [UInt8] {
        var writer = JSONWriter()
        writer.write(value)
        return writer.bytes
    }
}
