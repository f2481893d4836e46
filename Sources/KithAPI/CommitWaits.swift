import KithHTTP

/// Reads wait for the commit of what this node acknowledged before them (docs/consistency.md):
/// a writer with a write-ahead log answers a write once it is in the log, and makes it readable
/// with a later commit (`APIWriter.acknowledgedLogSequence`). A read that follows an
/// acknowledgement, on this node, therefore sees the write, as it did when writes were
/// answered after their commit; a read with a session token waits for the token's own changes
/// the same way.
extension NodeAPI {
    /// How long a read waits for those commits before it is answered 503.
    static let commitWaitMillis: Int64 = 2_000

    /// Runs `body` once the store has committed this node's own changes through `token` (a
    /// session token's own component) and every write acknowledged before now.
    func afterAcknowledgedWrites(token: UInt64 = 0, respond: @escaping Respond, _ body: @escaping @Sendable (@escaping Respond) -> Void) {
        // Acknowledged first, then committed: both only grow, so this order never lets a read
        // pass a write acknowledged before it.
        let needed = max(writer.acknowledgedLogSequence, token)
        guard needed > writer.committedLogSequence else { return body(respond) }
        awaitCommit(needed, deadline: host.monotonicMillis() + Self.commitWaitMillis, respond: respond, body)
    }

    private func awaitCommit(
        _ needed: UInt64, deadline: Int64, respond: @escaping Respond, _ body: @escaping @Sendable (@escaping Respond) -> Void
    ) {
        let seen = commitWaiters.generation
        if needed <= writer.committedLogSequence { return body(respond) }
        do {
            // Changes the writer committed outside its write-ahead-log transactions (tasks) count too.
            if try store.versionVector()[origin] >= needed { return body(respond) }
        } catch {
            return respond(.error(500, code: "storage_error", message: "the profile could not be read"))
        }
        let remaining = deadline - host.monotonicMillis()
        guard remaining > 0 else { return respond(Self.commitNotVisible) }
        let waiter = LogWaiters.Waiter { [self] expired, id in
            if !expired { commitWaiters.done(id) }
            host.background {
                guard !expired else { return respond(Self.commitNotVisible) }
                self.awaitCommit(needed, deadline: deadline, respond: respond, body)
            }
        }
        switch commitWaiters.wait(waiter, id: nil, unless: seen) {
        case .waiting(let id, _):
            if !host.after(millis: Int(remaining), { [commitWaiters] in commitWaiters.expire(id) }) { commitWaiters.expire(id) }
        case .logAdvanced: host.background { self.awaitCommit(needed, deadline: deadline, respond: respond, body) }
        case .over: respond(Self.commitNotVisible)
        }
    }

    static var commitNotVisible: HTTPResponse {
        .error(
            503, code: "write_not_visible",
            message: "writes this node acknowledged are not yet readable here (its store is not committing, or it is stopping); retry")
    }
}
