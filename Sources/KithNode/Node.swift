import Foundation
import KithAPI
import KithCRDT
import KithCluster
import KithCompression
import KithCrypto
import KithHTTP
import KithJSON
import KithLMDB
import KithNet
import KithPolicy
import KithProfile
import KithReplication
import KithStore
import KithStoreLMDB
import Synchronization

/// One Kith node: the store, its single writer, replication, the read audit and the HTTP
/// server, wired around the API (`NodeAPI`, which decides every answer).
public final class Node: Sendable {
    public static let version = NodeAPI.version

    public let configuration: NodeConfiguration
    let store: any NodeStore
    let committer: any NodeWriter
    /// Who read which profile, for what, and what they saw.
    let audit: ReadAudit
    /// Drops what the policy's retention rules say has expired, in the background.
    let sweeper: RetentionSweeper
    let server: HTTPServer
    /// The routes and their handlers.
    let api: NodeAPI
    public let log: Log
    /// The deadlines of the change feed's long polls.
    let feedDeadlines = Deadlines(name: "kith-feed")
    /// Replication, when the node has a gossip address (nil: a node on its own).
    let replication: ReplicationService?
    /// This data directory's origin id: its changes are numbered under it (docs/replication.md).
    public let origin: UInt64

    /// Tells replication of each commit, and the change feed of each commit local or
    /// replicated (both are created after the writer, which needs the link).
    private final class CommitListener: Sendable {
        let replication = Mutex<ReplicationService?>(nil)
        let feed = Mutex<NodeAPI?>(nil)
        func committed() {
            replication.withLock { $0 }?.committed()
            logAdvanced()
        }
        func logAdvanced() { feed.withLock { $0 }?.logAdvanced() }
        /// Committed, not yet durable: reads waiting for acknowledged writes may go ahead.
        func visible() { feed.withLock { $0 }?.writesVisible() }
        /// Whether a read or a feed waits for a commit (before the API exists: nobody can).
        func awaited() -> Bool { feed.withLock { $0 }?.waitsForCommits ?? false }
    }

    public init(configuration: NodeConfiguration) throws {
        try configuration.validate()
        self.configuration = configuration
        let log = Log()
        self.log = log
        let secret = try Self.loadSecret(configuration.secretFile ?? configuration.dataDirectory + ".secret")
        try FileManager.default.createDirectory(atPath: configuration.dataDirectory, withIntermediateDirectories: true)
        origin = try Self.loadOrigin(configuration.dataDirectory + "/origin")
        // A node without peers makes committed groups durable on a sync thread while the writer
        // goes on (`GroupCommitter`, docs/storage.md "Durability"), and keeps no replication
        // state (digest tree, entries that travel ahead): it has no one to send it to. Both are
        // rebuilt when the node starts with peers.
        let standalone = configuration.gossip == nil
        let rules = try configuration.identity.identityRules()
        let storeConfiguration = StoreConfiguration(
            node: origin, forgetKeySecret: secret, profile: ProfileConfiguration(rules: rules, historyLimit: configuration.historyLimit),
            replicates: !standalone, repackPeriodMillis: Int64(configuration.repackPeriodSeconds) * 1_000)
        // Commits of messages defer LMDB's second sync (docs/storage.md, "Durability"): on a
        // node with peers too, since replication reads only entries already on disk
        // (`ReplicaStore.durableLogSequence`).
        var lmdb = LMDBEnvironment.Configuration()
        lmdb.allowsDeferredSync = true
        if configuration.compactOnStart,
            let compaction = try LMDBProfileStore.compactDataFile(path: configuration.dataDirectory, keyFile: configuration.keyFile)
        {
            log(
                .info, "compacted the data file",
                [
                    ("bytesBefore", .number(JSONNumber(Int64(compaction.bytesBefore)))),
                    ("bytesAfter", .number(JSONNumber(Int64(compaction.bytesAfter)))),
                ])
        }
        let store = try LMDBProfileStore(
            path: configuration.dataDirectory, configuration: storeConfiguration, keyFile: configuration.keyFile, lmdb: lmdb)
        self.store = store
        if store.identifiersMovedOnOpen > 0 {
            log(.info, "moved the store to identifier rows", [("identifiers", .number(JSONNumber(Int64(store.identifiersMovedOnOpen))))])
        }
        if store.identifierRowsCheckedOnOpen > 0 {
            log(.info, "gave identifier rows a key header check", [("rows", .number(JSONNumber(Int64(store.identifierRowsCheckedOnOpen))))])
        }
        // Writes answered from the write-ahead log before a crash reach the store first, before
        // anything else writes: replayed from the state they were first applied to, they land
        // where their answers said. Also when the log is now turned off (a log left by an
        // earlier run still holds answered writes).
        let writeLogDirectory = configuration.dataDirectory + "/wal"
        var writeLog: WriteAheadLog? = nil
        if configuration.writeAheadLog || FileManager.default.fileExists(atPath: writeLogDirectory) {
            let recovered = try Self.recoverWriteLog(writeLogDirectory, store: store, log: log, segmentLimit: configuration.writeLogSegmentBytes)
            if configuration.writeAheadLog {
                writeLog = recovered
            } else {
                // Everything it held is in the store now.
                try FileManager.default.removeItem(atPath: writeLogDirectory)
            }
        }
        // Profiles built under other identity rules are built again before the node serves
        // (and before the writer claims the store): the same links and rules make the same
        // profiles on every replica.
        if try store.identityRulesNeedWork() {
            log(.info, "bringing profiles under identity rules version \(rules.version)")
            var batches = 0
            while try !store.reevaluateIdentity(buckets: 16) { batches += 1 }
            log(.info, "profiles under identity rules version \(rules.version)", [("batches", .number(JSONNumber(Int64(batches + 1))))])
        }
        // The one writer: every write transaction of the node runs on its thread (the store
        // checks this in debug builds). Its commits prompt replication to push.
        let pushes = CommitListener()
        let committer: any NodeWriter
        if let writeLog {
            var batching = WriteLogBatching()
            batching.maximumAgeNanoseconds = UInt64(configuration.writeLogMaxAgeMillis) * 1_000_000
            committer = LoggedWriter(
                store: store, log: writeLog, batching: batching, claim: { store.claimWriter() },
                // Peers copy only committed changes: they always watch.
                watched: { !standalone || pushes.awaited() }, onVisible: { pushes.visible() }
            ) {
                pushes.committed()
            }
        } else {
            committer = GroupCommitter(
                store: ProfileStoreCommits(store: store), origin: origin, defersSync: true, claim: { store.claimWriter() }
            ) { pushes.committed() }
        }
        self.committer = committer
        let policy = try Self.loadPolicy(configuration.policyFile)
        if !standalone {
            let (keys, sending) = try configuration.clusterKeys()
            let replication = try ReplicationService(
                store: store, origin: origin, configuration: configuration, policy: policy, keys: ClusterKeys(keys: keys, sending: sending),
                forgetKeySecret: secret, log: log,
                writer: { task in
                    committer.perform {
                        task()
                        pushes.logAdvanced()
                    }
                })
            pushes.replication.withLock { $0 = replication }
            self.replication = replication
        } else {
            replication = nil
        }
        let compactor = try FileCompactor(store: store, rule: configuration.compactionRule, perform: { committer.perform($0) }, log: log)
        sweeper = RetentionSweeper(
            rules: policy.retention, store: store, interval: Double(configuration.retentionSweepSeconds),
            pacing: RetentionPacing(share: configuration.retentionSweepShare), compactor: compactor, log: log
        ) { committer.perform($0) }
        audit = try ReadAudit(path: configuration.dataDirectory + "/audit", retentionDays: configuration.auditRetentionDays, log: log)
        let (host, port) = try configuration.httpAddress()
        var http = HTTPServer.Configuration()
        http.host = host
        http.port = port
        http.loops = configuration.loops
        let route = RouteBox()
        server = HTTPServer(configuration: http) { request, responder in route.api?.handle(request, responder) }
        var settings = NodeAPI.Settings(
            nodeName: configuration.nodeName, dataDirectory: configuration.dataDirectory, origin: origin,
            ingestQueueLimit: configuration.ingestQueueLimit, logRequests: configuration.logRequests, writeKeys: configuration.writeKeys,
            principals: try configuration.tokens.map { token in try Self.principal(token, policy) }, policy: policy,
            subjectHasher: HMACForgetKeyHasher(secret: secret), exportCursor: ExportCursor(secret: secret),
            clockNode: Self.nodeIdentifier(configuration.nodeName),
            identifierSources: try configuration.identity.identifierSources(), identityRules: rules,
            maxEventAge: try configuration.maxEventAgeMillis(), webhookSigner: WebhookSigner(secret: secret),
            webhookRetry: configuration.webhookRetry)
        settings.scopedSite = configuration.site != nil
        api = NodeAPI(
            settings: settings, store: store, writer: committer, replication: replication, audit: audit,
            host: ProcessHost(server: server, sweeper: sweeper, compactor: compactor, deadlines: feedDeadlines),
            log: log)
        route.api = api
        pushes.feed.withLock { $0 = api }
    }

    /// Starts serving; returns the HTTP port.
    public func start() throws -> UInt16 {
        let port = try server.start()
        sweeper.start()
        api.startWebhooks()
        if let replication {
            // A wildcard listener is advertised at the host peers already reach this node on.
            var host = try configuration.httpAddress().host
            if ["0.0.0.0", "::", ""].contains(host) {
                host = String(replication.transport.address.split(separator: ":").dropLast().joined(separator: ":"))
            }
            replication.start(api: (host.contains(":") ? "[\(host)]" : host) + ":\(port)")
        }
        return port
    }

    /// The address peers reach this node on, when it replicates.
    public var gossipAddress: String? { replication?.transport.address }

    /// Graceful stop: no new connections, in-flight requests answered, queued writes committed.
    public func stop() {
        api.stop()
        // The long polls were answered by the API's stop: their timers have nothing left to do.
        feedDeadlines.stop(early: true)
        server.stop()
        // Replication first: its queued writes then finish with the writer's, and nothing
        // submits more once the writer stops.
        replication?.stop()
        sweeper.stop()
        committer.stop()
        audit.stop()
        do { try store.synchronize() } catch { log(.error, "the store could not be synced at stop", [("error", .string("\(error)"))]) }
    }

    // MARK: - Helpers

    /// Applies the write-ahead log's records that the store does not hold yet (acknowledged
    /// writes a crash kept out of LMDB), durably, and opens the log after them. Damage — a
    /// record cut short or failing its checksum, as a crash mid-append leaves — ends what is
    /// read: the records before it are applied, nothing after it, and the log says what went.
    static func recoverWriteLog(_ directory: String, store: LMDBProfileStore, log: Log, segmentLimit: Int = 32 << 20) throws -> WriteAheadLog {
        let applied = try store.writeLogApplied()
        let recovery = try WriteAheadLog.recover(directory: directory, after: applied)
        if let damage = recovery.damage {
            log(
                .warning, "the write log ends early; what follows the damage was set aside (.damaged files)",
                [("damage", .string(damage)), ("droppedBytes", .number(JSONNumber(Int64(recovery.droppedBytes))))])
        }
        var records = recovery.records[...]
        var last = applied
        var messages = 0
        // Transactions no larger than the writer makes: a long log replays in bounded steps.
        let limit = WriteLogBatching().maximumMessages
        while !records.isEmpty {
            var taken = 0
            try store.applyGroups(
                deferringSync: false,
                next: {
                    guard let record = records.first, taken == 0 || taken + record.deltas.count <= limit else { return nil }
                    records.removeFirst()
                    taken += record.deltas.count
                    last = record.sequence
                    return record.deltas
                }, applied: { _, _, _ in }, logPosition: { last })
            messages += taken
        }
        if !recovery.records.isEmpty {
            log(
                .info, "applied the write log's records the store did not hold",
                [("records", .number(JSONNumber(Int64(recovery.records.count)))), ("messages", .number(JSONNumber(Int64(messages))))])
        }
        return try WriteAheadLog(directory: directory, after: max(last, recovery.lastSequence), segmentLimit: segmentLimit)
    }

    /// The policy file's policy, or the built-in one.
    static func loadPolicy(_ path: String?) throws -> Policy {
        guard let path else { return Policy.builtIn }
        guard let data = FileManager.default.contents(atPath: path) else { throw ConfigurationError("cannot read policy file \(path)") }
        do {
            return try Policy(parsing: Array(data))
        } catch {
            throw ConfigurationError("policy \(path): \(error)")
        }
    }

    /// A configured token as a principal; `*` grants every purpose of the policy.
    static func principal(_ token: NodeConfiguration.Token, _ policy: Policy) throws -> (hash: [UInt8], principal: Principal) {
        guard let hash = Crypto.bytes(hex: token.sha256), let role = Role(rawValue: token.role) else {
            throw ConfigurationError("token \(token.name) is invalid")
        }
        var purposes: [String] = []
        for purpose in token.purposes {
            if purpose == "*" {
                purposes += policy.purposes.keys.sorted()
            } else {
                guard policy.purposes[purpose] != nil else {
                    throw ConfigurationError("token \(token.name): the policy has no purpose \"\(purpose)\"")
                }
                purposes.append(purpose)
            }
        }
        return (hash, Principal(name: token.name, role: role, purposes: purposes))
    }

    static func nodeIdentifier(_ name: String) -> UInt64 {
        Crypto.sha256(Array(name.utf8)).prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Reads the forget-key secret, creating a random one (mode 0600) on first start. Every node
    /// of a cluster must share it (peers with another secret are refused).
    static func loadSecret(_ path: String) throws -> [UInt8] {
        let secret = try loadOrCreate(path, Crypto.randomBytes(32))
        guard secret.count >= 32 else { throw ConfigurationError("\(path) holds fewer than 32 bytes of secret") }
        return secret
    }

    /// This data directory's origin id, chosen at random when the directory is new: a directory
    /// restored from a backup or started empty must not reuse the sequence numbers its peers
    /// have already seen under the old id.
    static func loadOrigin(_ path: String) throws -> UInt64 {
        let bytes = try loadOrCreate(path, Crypto.randomBytes(8))
        guard bytes.count == 8 else { throw ConfigurationError("\(path) must hold 8 bytes") }
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// The file's bytes, or `fresh` written with O_EXCL (two nodes starting at once agree on one).
    private static func loadOrCreate(_ path: String, _ fresh: @autoclosure () throws -> [UInt8]) throws -> [UInt8] {
        if let data = FileManager.default.contents(atPath: path) { return Array(data) }
        let bytes = try fresh()
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if descriptor < 0 {
            guard errno == EEXIST, let data = FileManager.default.contents(atPath: path) else {
                throw ConfigurationError("cannot create \(path): \(String(cString: strerror(errno)))")
            }
            return Array(data)
        }
        defer { close(descriptor) }
        guard bytes.withUnsafeBytes({ write(descriptor, $0.baseAddress, $0.count) }) == bytes.count, fsync(descriptor) == 0 else {
            throw ConfigurationError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
        return bytes
    }
}

/// Wall-clock now in Unix milliseconds: the one clock reading behind message receive times,
/// erasure and consent stamps, audit times and membership incarnations.
func unixMillis() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000) }

/// Lets the server's handler reach the API without a retain cycle at init.
private final class RouteBox: @unchecked Sendable {
    weak var api: NodeAPI?
}

/// The process as the API's host: the server's connections, the system's clocks, and
/// Dispatch's global queue for work that may wait.
struct ProcessHost: APIHost {
    let server: HTTPServer
    let sweeper: RetentionSweeper
    let compactor: FileCompactor
    let deadlines: Deadlines
    var retention: RetentionTotals { sweeper.dropped }
    func compactDataFile() -> DataFileCompactionOutcome { compactor.compact() }
    func after(millis: Int, _ body: @escaping @Sendable () -> Void) -> Bool { deadlines.after(millis: millis, body) }

    /// On Dispatch's global queue: a delivery waits on its receiver, never on a loop.
    func post(
        _ url: WebhookURL, headers: [HTTPHeader], body: [UInt8], timeoutMillis: Int, completion: @escaping @Sendable (Result<Int, any Error>) -> Void
    ) {
        DispatchQueue.global().async {
            completion(
                Result {
                    let client = try HTTPClient(address: url.address, timeoutSeconds: max(1, timeoutMillis / 1_000))
                    return try client.request("POST", url.target, headers: headers + [HTTPHeader("Connection", "close")], body: body).status
                })
        }
    }
    /// On Dispatch's global queue, one connection a request: a forwarded read waits on the core,
    /// never on a loop.
    func forward(
        to address: String, _ method: String, _ target: String, headers: [HTTPHeader], body: [UInt8], timeoutMillis: Int,
        completion: @escaping @Sendable (Result<HTTPResponse, any Error>) -> Void
    ) {
        DispatchQueue.global().async {
            completion(
                Result {
                    let client = try HTTPClient(address: address, timeoutSeconds: max(1, timeoutMillis / 1_000))
                    let answer = try client.request(method, target, headers: headers + [HTTPHeader("Connection", "close")], body: body)
                    let kept = answer.headers.filter { $0.hasName("content-type") }
                    return HTTPResponse(status: answer.status, headers: kept, body: answer.body)
                })
        }
    }
    var openConnections: Int { server.openConnections }
    func wallMillis() -> Int64 { unixMillis() }
    func monotonicNanos() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
    func background(_ work: @escaping @Sendable () -> Void) { DispatchQueue.global().async(execute: work) }
}
