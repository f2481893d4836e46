import Foundation
import KithCluster
import KithCrypto
import KithProfile
import KithStore

/// A node's settings: from a JSON file (`--config`), overridden by `KITH_*` environment
/// variables, overridden by command-line flags.
public struct NodeConfiguration: Codable, Sendable, Equatable {
    /// A principal: a caller of the API, known by the SHA-256 of its bearer token.
    public struct Token: Codable, Sendable, Equatable {
        public var name: String
        /// Hex SHA-256 of the bearer token: the config never holds the token itself.
        public var sha256: String
        /// `reader`, `ingest`, `admin` or `privacy` (see docs/privacy.md).
        public var role: String
        /// The purposes it may read for; `*` stands for every purpose of the policy.
        public var purposes: [String]

        public init(name: String, sha256: String, role: String, purposes: [String]) {
            self.name = name
            self.sha256 = sha256
            self.role = role
            self.purposes = purposes
        }

        public init(from decoder: Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            name = try container.decode(String.self, forKey: .name)
            sha256 = try container.decode(String.self, forKey: .sha256)
            role = try container.decode(String.self, forKey: .role)
            purposes = try container.decodeIfPresent([String].self, forKey: .purposes) ?? []
        }
    }

    /// Where messages carry identifiers beyond the built-in places (docs/identity.md,
    /// "Identifier kinds and where they come from").
    public struct Identity: Codable, Sendable, Equatable {
        /// ISO 3166-1 code of the region national phone numbers are read in (`GB`).
        public var phoneRegion: String?
        /// For a region not in Kith's table: its country calling code and trunk prefix.
        public var phoneCountryCode: String?
        public var phoneTrunkPrefix: String?
        /// Custom kinds: name (`loyalty_card`) → the form its values are compared in (`exact`,
        /// `trimmed`, `lowercase`, `uppercase`, `digits`). Every node must configure a kind
        /// with the same form; a node without it still keeps and replicates its identifiers.
        public var kinds: [String: String] = [:]
        /// Field path (`traits.loyaltyCard`, `context.app.installId`, `properties.deviceId`) →
        /// the kind of identifier found there.
        public var sources: [String: String] = [:]
        /// `context.externalIds[].type` → kind (types named as a kind map to it by default).
        public var externalIdTypes: [String: String] = [:]
        /// The identity rules' version: change it with the rules below, and every node brings
        /// its profiles under the new rules when it starts (docs/identity.md).
        public var rulesVersion = 0
        /// Values that identify nobody: `"*"` for every kind, or a kind's name → values
        /// (compared trimmed, without case). `"*"` replaces the built-in list when given.
        public var blocked: [String: [String]] = [:]
        /// Kind → regular expressions a whole value must not match.
        public var blockedPatterns: [String: [String]] = [:]
        /// Kind → the most identifiers of it one profile holds (default: one user_id).
        public var limits: [String: Int]?
        /// Kind → days its limit counts within ("5 within 7 days"); the kind needs a limit.
        public var limitWindowDays: [String: Int] = [:]
        /// Kinds in the order that names a profile (the rest follow in the default order).
        public var priority: [String]?

        public init() {}

        enum CodingKeys: String, CodingKey, CaseIterable {
            case phoneRegion, phoneCountryCode, phoneTrunkPrefix, kinds, sources, externalIdTypes, rulesVersion, blocked, blockedPatterns, limits,
                limitWindowDays, priority
        }

        public init(from decoder: Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            phoneRegion = try container.decodeIfPresent(String.self, forKey: .phoneRegion)
            phoneCountryCode = try container.decodeIfPresent(String.self, forKey: .phoneCountryCode)
            phoneTrunkPrefix = try container.decodeIfPresent(String.self, forKey: .phoneTrunkPrefix)
            kinds = try container.decodeIfPresent([String: String].self, forKey: .kinds) ?? [:]
            sources = try container.decodeIfPresent([String: String].self, forKey: .sources) ?? [:]
            externalIdTypes = try container.decodeIfPresent([String: String].self, forKey: .externalIdTypes) ?? [:]
            rulesVersion = try container.decodeIfPresent(Int.self, forKey: .rulesVersion) ?? 0
            blocked = try container.decodeIfPresent([String: [String]].self, forKey: .blocked) ?? [:]
            blockedPatterns = try container.decodeIfPresent([String: [String]].self, forKey: .blockedPatterns) ?? [:]
            limits = try container.decodeIfPresent([String: Int].self, forKey: .limits)
            limitWindowDays = try container.decodeIfPresent([String: Int].self, forKey: .limitWindowDays) ?? [:]
            priority = try container.decodeIfPresent([String].self, forKey: .priority)
        }

        /// The custom kinds and their forms. Throws on a name that cannot be a kind's or a form
        /// there is not, naming it.
        public func customKinds() throws -> [IdentifierKind: ValueForm] {
            var custom: [IdentifierKind: ValueForm] = [:]
            for (name, formName) in kinds {
                guard let kind = IdentifierKind(custom: name) else {
                    throw ConfigurationError(
                        "identity: kind \"\(name)\" must be 1 to \(IdentifierKind.maximumNameBytes) of a-z, 0-9 and _, start with a letter, "
                            + "and not be a built-in kind's name")
                }
                guard let form = ValueForm(rawValue: formName) else {
                    throw ConfigurationError(
                        "identity: kind \(name) has form \"\(formName)\"; forms are " + ValueForm.allCases.map(\.rawValue).joined(separator: ", "))
                }
                custom[kind] = form
            }
            return custom
        }

        /// The kind named `name`, or an error naming `what` gave it and the kinds there are.
        func kind(_ name: String, _ what: String) throws -> IdentifierKind {
            guard let kind = IdentifierKind(name: name), kind != .groupId, !kind.isCustom || kinds[name] != nil else {
                throw ConfigurationError(
                    "identity: \(what) names kind \"\(name)\"; kinds are "
                        + (IdentifierKind.people.map(\.name) + kinds.keys.sorted()).joined(separator: ", "))
            }
            return kind
        }

        /// The identity rules in force. Throws on an unknown kind, a limit below 1 or a pattern
        /// that is not a regular expression, naming it.
        public func identityRules() throws -> IdentityRules {
            var byKind: [IdentifierKind: Set<String>] = [:]
            for (name, values) in blocked where name != "*" { byKind[try kind(name, "blocked")] = Set(values) }
            var patterns: [IdentifierKind: [String]] = [:]
            for (name, list) in blockedPatterns { patterns[try kind(name, "blockedPatterns")] = list }
            var kindLimits: [IdentifierKind: Int] = [.userId: 1]
            if let limits {
                kindLimits = [:]
                for (name, limit) in limits { kindLimits[try kind(name, "limits")] = limit }
            }
            var windows: [IdentifierKind: Int64] = [:]
            for (name, days) in limitWindowDays {
                guard (1...3_650).contains(days) else { throw ConfigurationError("identity: limitWindowDays.\(name) must be 1 to 3650 days") }
                windows[try kind(name, "limitWindowDays")] = Int64(days) * 86_400_000
            }
            let order = try (priority ?? []).map { try kind($0, "priority") }
            guard Set(order).count == order.count else { throw ConfigurationError("identity: priority names a kind twice") }
            do {
                return try IdentityRules(
                    version: rulesVersion, blockedValues: blocked["*"].map(Set.init) ?? IdentityRules.defaultBlockedValues, blockedByKind: byKind,
                    blockedPatterns: patterns, limits: kindLimits, windows: windows, priority: order)
            } catch {
                throw ConfigurationError("identity: \(error)")
            }
        }

        /// The sources in force: the built-in ones and these. Throws on a path, kind or region
        /// that cannot be used, naming it.
        public func identifierSources() throws -> IdentifierSources {
            var extra: [IdentifierSources.Source] = []
            for (path, name) in sources.sorted(by: { $0.key < $1.key }) {
                guard let source = IdentifierSources.Source(path: path, kind: try kind(name, "source \(path)")) else {
                    throw ConfigurationError("identity: source \"\(path)\" must be traits.NAME, context.PATH or properties.NAME")
                }
                extra.append(source)
            }
            var types: [String: IdentifierKind] = [:]
            for (type, name) in externalIdTypes { types[type] = try kind(name, "externalIdTypes.\(type)") }
            var region: PhoneNumber.Region?
            if let phoneCountryCode {
                guard (1...3).contains(phoneCountryCode.count), phoneCountryCode.allSatisfy(\.isASCII), phoneCountryCode.allSatisfy(\.isNumber) else {
                    throw ConfigurationError("identity: phoneCountryCode must be 1 to 3 digits")
                }
                let trunk = phoneTrunkPrefix ?? ""
                guard trunk.count <= 2, trunk.allSatisfy(\.isASCII), trunk.allSatisfy(\.isNumber) else {
                    throw ConfigurationError("identity: phoneTrunkPrefix must be at most 2 digits")
                }
                region = PhoneNumber.Region(code: phoneRegion ?? "", countryCode: phoneCountryCode, trunkPrefix: trunk)
            } else if let phoneRegion {
                guard let known = PhoneNumber.Region(code: phoneRegion) else {
                    throw ConfigurationError(
                        "identity: phoneRegion \"\(phoneRegion)\" is not in Kith's table; give phoneCountryCode and phoneTrunkPrefix")
                }
                region = known
            }
            return IdentifierSources.builtIn.adding(extra, externalIdTypes: types, phoneRegion: region, customKinds: try customKinds())
        }
    }

    public var nodeName = "kith-1"
    public var dataDirectory = "./data"
    /// `host:port` of the HTTP listener.
    public var http = "127.0.0.1:7080"
    public var writeKeys: [String] = []
    public var tokens: [Token] = []
    /// Event loops (threads) serving HTTP.
    public var loops = 2
    /// Recent events kept in each profile view.
    public var historyLimit = 10
    /// The file holding the secret that keys erased customers' hashes (created if missing).
    /// Keep it apart from the data directory and its backups.
    public var secretFile: String?
    /// The file of the store's data keys (docs/storage.md, "Sealing"); by default the data
    /// directory's path + `.keys`. Keep it apart from the data and its backups: erasure destroys
    /// keys in this file, which is what makes erased data unreadable in old backups.
    public var keyFile: String?
    /// Log every request (request id, route template, status, duration; never paths or bodies).
    public var logRequests = false
    /// Ingest requests waiting for the writer beyond which new ones get 429 (load shedding).
    public var ingestQueueLimit = 2_000
    /// Acknowledge writes once they are in the write-ahead log, and apply them to LMDB in large
    /// transactions (docs/storage.md, "The write-ahead log"); false: once each group's LMDB
    /// commit is durable, as before the log.
    public var writeAheadLog = true
    /// Before opening the store, replace the data file with a compacting copy of it, giving the
    /// file's free pages back to the file system (docs/storage.md, "Retention and file size");
    /// env `KITH_COMPACT_ON_START`. The start takes as long as a backup of the store.
    public var compactOnStart = false
    /// Give the data file's free pages back while serving: after a retention pass, when the
    /// free pages are at least `compactionFreeFraction` of the file, or the file has grown by
    /// `compactionGrowthFraction` past the last compaction, by at least
    /// `compactionMinimumFreeBytes` either way (`FileCompactionRule`), a compacting copy is made
    /// while the node goes on and swapped in (docs/storage.md, "Compaction while serving"); env
    /// `KITH_COMPACT_WHILE_SERVING`.
    public var compactWhileServing = true
    public var compactionFreeFraction = 0.25
    /// Due too once the file has grown by this share past what the last compaction made it
    /// (`FileCompactionRule`'s default).
    public var compactionGrowthFraction = FileCompactionRule().growthFraction
    /// env `KITH_COMPACTION_MINIMUM_FREE_BYTES`.
    public var compactionMinimumFreeBytes = 64 << 20

    /// When the node compacts its data file while serving; nil when it does not.
    var compactionRule: FileCompactionRule? {
        compactWhileServing
            ? FileCompactionRule(
                freeFraction: compactionFreeFraction, growthFraction: compactionGrowthFraction, minimumFreeBytes: compactionMinimumFreeBytes) : nil
    }
    /// The size past which the write-ahead log starts a new segment (and drops the applied
    /// ones) at the next commit; env `KITH_WRITE_LOG_SEGMENT_BYTES` only (tests make it small).
    public var writeLogSegmentBytes = 32 << 20
    /// How long the writer keeps a transaction open at most (`WriteLogBatching`); env
    /// `KITH_WRITE_LOG_MAX_AGE_MILLIS` only. Reads of acknowledged writes wait up to this plus
    /// the commit; larger commits fewer pages per message.
    public var writeLogMaxAgeMillis = 15
    /// `host:port` of the peer (gossip) listener; nil runs the node alone.
    public var gossip: String?
    /// Peer addresses to join through.
    public var seeds: [String] = []
    /// How many core replicas the cluster has (docs/consistency.md). Write and read levels
    /// count against the larger of this and the core members this node knows; set it, or a node
    /// that has just started and knows no peers yet counts itself as the whole cluster.
    public var replicas: Int?
    /// Seconds between digest-tree comparisons with each peer in turn (anti-entropy that repairs
    /// what no change log holds; docs/replication.md). 0 turns them off.
    public var antiEntropyIntervalSeconds = 30
    /// How long a member may be silent before it stops holding this node's change-log
    /// truncation back (`30d`, `12h`, `90m`, `45s`); it is then brought up to date by a tree
    /// comparison when it returns (docs/replication.md, "Log truncation").
    public var maxOfflineWindow = "30d"
    /// The oldest a message may be dated, before its receipt (`400d`; units as `maxOfflineWindow`);
    /// older messages are refused at ingest. Unset: any age. Must be longer than the window.
    public var maxEventAge: String?
    /// Seconds between looks for change-log entries every member has read. 0 never truncates.
    public var logTruncationIntervalSeconds = 10
    /// Seconds between passes of the retention sweep (the policy's `retention`, docs/privacy.md).
    public var retentionSweepSeconds = 3_600
    /// The most of the writer's time a retention pass takes while it runs (`RetentionPacing`):
    /// above 0, at most 1 (steps back to back); env `KITH_RETENTION_SWEEP_SHARE`.
    public var retentionSweepShare = RetentionPacing().share
    /// The sweep writes the stored rows again in order on its first pass of each such period
    /// (UTC days by default; `RepackSchedule`, docs/storage.md "Retention and file size"); env
    /// `KITH_REPACK_PERIOD`.
    public var repackPeriodSeconds = 86_400
    /// Seconds between passes of forget compaction (with `maxEventAge` set; docs/replication.md,
    /// "Compacting forget entries"); a pass goes a step every `logTruncationIntervalSeconds`.
    public var forgetCompactionIntervalSeconds = 3_600
    /// Webhook retries (docs/feed.md): the first wait, the longest, and the attempts before a
    /// batch is parked as a dead letter.
    public var webhookFirstRetryMillis = 1_000
    public var webhookMaxRetryMillis = 60_000
    public var webhookAttempts = 8
    /// `core` or `edge` (an edge site may be away for days; see docs/replication.md).
    public var role = "core"
    /// The cluster key file (`id hex` per line, the first sends); or `KITH_CLUSTER_KEY`.
    public var clusterKeyFile: String?
    /// A cluster key given directly (hex; from `KITH_CLUSTER_KEY`, never from a file or flag).
    public var clusterKey: String?
    /// The privacy policy (JSON, docs/privacy.md); nil uses the built-in policy, which is
    /// `cluster-configs/policy.example.json`.
    public var policyFile: String?
    /// Days read-audit records are kept.
    public var auditRetentionDays = 400
    /// Milliseconds this node's clock may be from a majority of the core members it reaches
    /// before it refuses writes and erasures (docs/replication.md, "Clocks").
    public var maxClockOffsetMillis: Int64 = 500
    /// Where messages carry identifiers (phone region, field paths, external id types).
    public var identity = Identity()
    /// Set on a scoped edge site: its purposes and scope (`Site`). Unset: the node holds every
    /// customer.
    public var site: Site?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case nodeName, dataDirectory, http, writeKeys, tokens, loops, historyLimit, secretFile, keyFile, logRequests, ingestQueueLimit
        case gossip, seeds, replicas, role, clusterKeyFile, policyFile, auditRetentionDays, antiEntropyIntervalSeconds
        case maxClockOffsetMillis, identity, maxOfflineWindow, logTruncationIntervalSeconds, retentionSweepSeconds, retentionSweepShare
        case repackPeriodSeconds, maxEventAge
        case webhookFirstRetryMillis, webhookMaxRetryMillis, webhookAttempts, writeAheadLog, forgetCompactionIntervalSeconds, site
        case compactOnStart, compactWhileServing, compactionFreeFraction, compactionGrowthFraction, compactionMinimumFreeBytes
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let defaults = NodeConfiguration()
        nodeName = try container.decodeIfPresent(String.self, forKey: .nodeName) ?? defaults.nodeName
        dataDirectory = try container.decodeIfPresent(String.self, forKey: .dataDirectory) ?? defaults.dataDirectory
        http = try container.decodeIfPresent(String.self, forKey: .http) ?? defaults.http
        writeKeys = try container.decodeIfPresent([String].self, forKey: .writeKeys) ?? []
        tokens = try container.decodeIfPresent([Token].self, forKey: .tokens) ?? []
        loops = try container.decodeIfPresent(Int.self, forKey: .loops) ?? defaults.loops
        historyLimit = try container.decodeIfPresent(Int.self, forKey: .historyLimit) ?? defaults.historyLimit
        secretFile = try container.decodeIfPresent(String.self, forKey: .secretFile)
        keyFile = try container.decodeIfPresent(String.self, forKey: .keyFile)
        logRequests = try container.decodeIfPresent(Bool.self, forKey: .logRequests) ?? false
        ingestQueueLimit = try container.decodeIfPresent(Int.self, forKey: .ingestQueueLimit) ?? defaults.ingestQueueLimit
        writeAheadLog = try container.decodeIfPresent(Bool.self, forKey: .writeAheadLog) ?? defaults.writeAheadLog
        compactOnStart = try container.decodeIfPresent(Bool.self, forKey: .compactOnStart) ?? defaults.compactOnStart
        compactWhileServing = try container.decodeIfPresent(Bool.self, forKey: .compactWhileServing) ?? defaults.compactWhileServing
        compactionFreeFraction = try container.decodeIfPresent(Double.self, forKey: .compactionFreeFraction) ?? defaults.compactionFreeFraction
        compactionGrowthFraction =
            try container.decodeIfPresent(Double.self, forKey: .compactionGrowthFraction) ?? defaults.compactionGrowthFraction
        compactionMinimumFreeBytes =
            try container.decodeIfPresent(Int.self, forKey: .compactionMinimumFreeBytes) ?? defaults.compactionMinimumFreeBytes
        gossip = try container.decodeIfPresent(String.self, forKey: .gossip)
        seeds = try container.decodeIfPresent([String].self, forKey: .seeds) ?? []
        replicas = try container.decodeIfPresent(Int.self, forKey: .replicas)
        antiEntropyIntervalSeconds =
            try container.decodeIfPresent(Int.self, forKey: .antiEntropyIntervalSeconds) ?? defaults.antiEntropyIntervalSeconds
        role = try container.decodeIfPresent(String.self, forKey: .role) ?? defaults.role
        clusterKeyFile = try container.decodeIfPresent(String.self, forKey: .clusterKeyFile)
        policyFile = try container.decodeIfPresent(String.self, forKey: .policyFile)
        auditRetentionDays = try container.decodeIfPresent(Int.self, forKey: .auditRetentionDays) ?? defaults.auditRetentionDays
        maxClockOffsetMillis = try container.decodeIfPresent(Int64.self, forKey: .maxClockOffsetMillis) ?? defaults.maxClockOffsetMillis
        identity = try container.decodeIfPresent(Identity.self, forKey: .identity) ?? Identity()
        maxOfflineWindow = try container.decodeIfPresent(String.self, forKey: .maxOfflineWindow) ?? defaults.maxOfflineWindow
        logTruncationIntervalSeconds =
            try container.decodeIfPresent(Int.self, forKey: .logTruncationIntervalSeconds) ?? defaults.logTruncationIntervalSeconds
        retentionSweepSeconds = try container.decodeIfPresent(Int.self, forKey: .retentionSweepSeconds) ?? defaults.retentionSweepSeconds
        retentionSweepShare = try container.decodeIfPresent(Double.self, forKey: .retentionSweepShare) ?? defaults.retentionSweepShare
        repackPeriodSeconds = try container.decodeIfPresent(Int.self, forKey: .repackPeriodSeconds) ?? defaults.repackPeriodSeconds
        forgetCompactionIntervalSeconds =
            try container.decodeIfPresent(Int.self, forKey: .forgetCompactionIntervalSeconds) ?? defaults.forgetCompactionIntervalSeconds
        maxEventAge = try container.decodeIfPresent(String.self, forKey: .maxEventAge)
        webhookFirstRetryMillis = try container.decodeIfPresent(Int.self, forKey: .webhookFirstRetryMillis) ?? defaults.webhookFirstRetryMillis
        webhookMaxRetryMillis = try container.decodeIfPresent(Int.self, forKey: .webhookMaxRetryMillis) ?? defaults.webhookMaxRetryMillis
        webhookAttempts = try container.decodeIfPresent(Int.self, forKey: .webhookAttempts) ?? defaults.webhookAttempts
        site = try container.decodeIfPresent(Site.self, forKey: .site)
    }

    /// Reads a JSON configuration file; unknown keys are refused (a typo must not pass silently).
    public static func load(file path: String) throws -> NodeConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError("cannot read configuration file \(path)")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {  // reported as the error below
            throw ConfigurationError("\(path) is not a JSON object")
        }
        let known = Set(CodingKeys.allNames)
        if let unknown = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw ConfigurationError("\(path): unknown setting \"\(unknown)\"")
        }
        if let site = object["site"] as? [String: Any] {
            if let unknown = site.keys.sorted().first(where: { !["purposes", "scope"].contains($0) }) {
                throw ConfigurationError("\(path): unknown setting \"site.\(unknown)\"")
            }
            for clause in site["scope"] as? [[String: Any]] ?? [] {
                if let unknown = clause.keys.sorted().first(where: { !["trait", "equals", "seenWithinDays", "identifiers"].contains($0) }) {
                    throw ConfigurationError("\(path): unknown setting \"site.scope[].\(unknown)\"")
                }
            }
        }
        if let identity = object["identity"] as? [String: Any] {
            let settings = Set(Identity.CodingKeys.allCases.map(\.rawValue))
            if let unknown = identity.keys.sorted().first(where: { !settings.contains($0) }) {
                throw ConfigurationError("\(path): unknown setting \"identity.\(unknown)\"")
            }
        }
        do {
            return try JSONDecoder().decode(NodeConfiguration.self, from: data)
        } catch {
            throw ConfigurationError("\(path): \(error)")
        }
    }

    /// Applies `KITH_*` environment variables.
    public mutating func apply(environment: [String: String]) throws {
        if let value = environment["KITH_NODE_NAME"] { nodeName = value }
        if let value = environment["KITH_DATA_DIR"] { dataDirectory = value }
        if let value = environment["KITH_HTTP"] { http = value }
        if let value = environment["KITH_WRITE_KEY"] { writeKeys.append(value) }
        if let value = environment["KITH_TOKEN"] { addToken(value) }
        if let value = environment["KITH_PRIVACY_TOKEN"] { addToken(value, role: "privacy") }
        if let value = environment["KITH_POLICY_FILE"] { policyFile = value }
        if let value = environment["KITH_SECRET_FILE"] { secretFile = value }
        if let value = environment["KITH_KEY_FILE"] { keyFile = value }
        if let value = environment["KITH_LOG_REQUESTS"] { logRequests = value == "1" || value == "true" }
        if let value = environment["KITH_WRITE_AHEAD_LOG"] { writeAheadLog = value == "1" || value == "true" }
        if let value = environment["KITH_COMPACT_ON_START"] { compactOnStart = value == "1" || value == "true" }
        if let value = environment["KITH_COMPACT_WHILE_SERVING"] { compactWhileServing = value == "1" || value == "true" }
        if let value = environment["KITH_GOSSIP"] { gossip = value }
        if let value = environment["KITH_SEEDS"] { seeds = Self.list(value) }
        /// The whole number `name` holds, if set; `unit` names what it counts in the error.
        func number(_ name: String, _ unit: String) throws -> Int? {
            guard let value = environment[name] else { return nil }
            guard let number = Int(value) else { throw ConfigurationError("\(name) must be a number\(unit)") }
            return number
        }
        if let count = try number("KITH_REPLICAS", "") { replicas = count }
        if let seconds = try number("KITH_ANTI_ENTROPY_INTERVAL", " of seconds") { antiEntropyIntervalSeconds = seconds }
        if let millis = try number("KITH_MAX_CLOCK_OFFSET_MS", " of milliseconds") { maxClockOffsetMillis = Int64(millis) }
        if let value = environment["KITH_ROLE"] { role = value }
        if let value = environment["KITH_MAX_OFFLINE_WINDOW"] { maxOfflineWindow = value }
        if let value = environment["KITH_MAX_EVENT_AGE"] { maxEventAge = value }
        if let seconds = try number("KITH_RETENTION_SWEEP_INTERVAL", " of seconds") { retentionSweepSeconds = seconds }
        if let value = environment["KITH_RETENTION_SWEEP_SHARE"] {
            guard let share = Double(value) else { throw ConfigurationError("KITH_RETENTION_SWEEP_SHARE must be a number") }
            retentionSweepShare = share
        }
        if let seconds = try number("KITH_REPACK_PERIOD", " of seconds") { repackPeriodSeconds = seconds }
        if let bytes = try number("KITH_COMPACTION_MINIMUM_FREE_BYTES", " of bytes") { compactionMinimumFreeBytes = bytes }
        if let seconds = try number("KITH_LOG_TRUNCATION_INTERVAL", " of seconds") { logTruncationIntervalSeconds = seconds }
        if let seconds = try number("KITH_FORGET_COMPACTION_INTERVAL", " of seconds") { forgetCompactionIntervalSeconds = seconds }
        if let value = environment["KITH_PHONE_REGION"] { identity.phoneRegion = value }
        if let value = environment["KITH_CLUSTER_KEY_FILE"] { clusterKeyFile = value }
        if let value = environment["KITH_CLUSTER_KEY"] { clusterKey = value }
        if let limit = try number("KITH_INGEST_QUEUE_LIMIT", "") { ingestQueueLimit = limit }
        if let bytes = try number("KITH_WRITE_LOG_SEGMENT_BYTES", "") { writeLogSegmentBytes = bytes }
        if let millis = try number("KITH_WRITE_LOG_MAX_AGE_MILLIS", "") { writeLogMaxAgeMillis = millis }
        if let millis = try number("KITH_WEBHOOK_FIRST_RETRY_MS", " of milliseconds") { webhookFirstRetryMillis = millis }
        if let millis = try number("KITH_WEBHOOK_MAX_RETRY_MS", " of milliseconds") { webhookMaxRetryMillis = millis }
        if let attempts = try number("KITH_WEBHOOK_ATTEMPTS", "") { webhookAttempts = attempts }
        // Flags come after: what they may still set (role, gossip) is checked with them.
        try validate(beforeFlags: true)
    }

    /// Adds an all-purpose token given on the command line or in the environment (admin by
    /// default; `--privacy-token` gives the privacy role).
    public mutating func addToken(_ token: String, role: String = "admin") {
        tokens.append(Token(name: "command-line-\(role)", sha256: Crypto.hex(Crypto.sha256(Array(token.utf8))), role: role, purposes: ["*"]))
    }

    /// The HTTP listener's host and port.
    public func httpAddress() throws -> (host: String, port: UInt16) {
        guard let colon = http.lastIndex(of: ":"), let port = UInt16(http[http.index(after: colon)...]) else {
            throw ConfigurationError("http must be host:port, got \"\(http)\"")
        }
        var host = String(http[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host, port)
    }

    /// A comma-separated list, blanks dropped.
    public static func list(_ text: String) -> [String] {
        text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// The cluster keys from the key file or `KITH_CLUSTER_KEY`.
    public func clusterKeys() throws -> (keys: [UInt8: [UInt8]], sending: UInt8) {
        if let clusterKeyFile {
            guard let text = try? String(contentsOfFile: clusterKeyFile, encoding: .utf8) else {  // reported as the error below
                throw ConfigurationError("cannot read cluster key file \(clusterKeyFile)")
            }
            return try ClusterKeys.parse(text)
        }
        guard let clusterKey else { throw ConfigurationError("a clustered node needs a cluster key: set KITH_CLUSTER_KEY or clusterKeyFile") }
        return try ClusterKeys.parse("1 \(clusterKey)")
    }

    /// `beforeFlags`: checked before the command line's flags apply, which may still set the
    /// role and the gossip address a site needs.
    public func validate(beforeFlags: Bool = false) throws {
        _ = try httpAddress()
        if let gossip {
            guard let colon = gossip.lastIndex(of: ":"), UInt16(gossip[gossip.index(after: colon)...]) != nil else {
                throw ConfigurationError("gossip must be host:port, got \"\(gossip)\"")
            }
            _ = try clusterKeys()
        }
        guard ["core", "edge"].contains(role) else { throw ConfigurationError("role must be core or edge") }
        if let site {
            guard beforeFlags || (role == "edge" && gossip != nil) else {
                throw ConfigurationError("site is for an edge node that replicates (role edge, gossip set)")
            }
            _ = try site.settings(origin: 0)
        }
        if let replicas, !(1...1_000).contains(replicas) { throw ConfigurationError("replicas must be 1 to 1000") }
        guard (0...86_400).contains(antiEntropyIntervalSeconds) else {
            throw ConfigurationError("antiEntropyIntervalSeconds must be 0 (off) to 86400")
        }
        for seed in seeds where seed.lastIndex(of: ":").flatMap({ UInt16(seed[seed.index(after: $0)...]) }) == nil {
            throw ConfigurationError("seed \"\(seed)\" must be host:port")
        }
        guard !nodeName.isEmpty, nodeName.utf8.count <= 64 else { throw ConfigurationError("nodeName must be 1 to 64 bytes") }
        guard (1...64).contains(loops) else { throw ConfigurationError("loops must be between 1 and 64") }
        guard (0...1_000).contains(historyLimit) else { throw ConfigurationError("historyLimit must be between 0 and 1000") }
        guard ingestQueueLimit >= 0 else { throw ConfigurationError("ingestQueueLimit must not be negative") }
        guard (1...1_000).contains(writeLogMaxAgeMillis) else { throw ConfigurationError("KITH_WRITE_LOG_MAX_AGE_MILLIS must be 1 to 1000") }
        guard writeLogSegmentBytes >= 1 else { throw ConfigurationError("KITH_WRITE_LOG_SEGMENT_BYTES must be positive") }
        for token in tokens where token.sha256.count != 64 || !token.sha256.allSatisfy(\.isHexDigit) {
            throw ConfigurationError("token \(token.name): sha256 must be 64 hex digits")
        }
        for token in tokens where !["reader", "ingest", "admin", "privacy"].contains(token.role) {
            throw ConfigurationError("token \(token.name): role must be reader, ingest, admin or privacy")
        }
        guard (1...36_500).contains(auditRetentionDays) else { throw ConfigurationError("auditRetentionDays must be 1 to 36500") }
        guard (10...3_600_000).contains(maxClockOffsetMillis) else { throw ConfigurationError("maxClockOffsetMillis must be 10 to 3600000") }
        _ = try identity.identifierSources()
        _ = try identity.identityRules()
        let window = try maxOfflineWindowMillis()
        if let age = try maxEventAgeMillis(), age <= window {
            throw ConfigurationError("maxEventAge (\(maxEventAge ?? "")) must be longer than maxOfflineWindow (\(maxOfflineWindow))")
        }
        guard (1...604_800).contains(forgetCompactionIntervalSeconds) else {
            throw ConfigurationError("forgetCompactionIntervalSeconds must be 1 to 604800")
        }
        guard (0...86_400).contains(logTruncationIntervalSeconds) else {
            throw ConfigurationError("logTruncationIntervalSeconds must be 0 (off) to 86400")
        }
        guard (1...604_800).contains(retentionSweepSeconds) else { throw ConfigurationError("retentionSweepSeconds must be 1 to 604800") }
        guard retentionSweepShare > 0 && retentionSweepShare <= 1 else {
            throw ConfigurationError("retentionSweepShare must be above 0 and at most 1")
        }
        guard (1...2_592_000).contains(repackPeriodSeconds) else { throw ConfigurationError("repackPeriodSeconds must be 1 to 2592000") }
        guard compactionFreeFraction > 0 && compactionFreeFraction < 1 else {
            throw ConfigurationError("compactionFreeFraction must be above 0 and below 1")
        }
        guard compactionGrowthFraction > 0 else { throw ConfigurationError("compactionGrowthFraction must be above 0") }
        guard compactionMinimumFreeBytes >= 0 else { throw ConfigurationError("compactionMinimumFreeBytes must not be negative") }
        guard (1...3_600_000).contains(webhookFirstRetryMillis), (webhookFirstRetryMillis...86_400_000).contains(webhookMaxRetryMillis),
            (1...1_000).contains(webhookAttempts)
        else {
            throw ConfigurationError(
                "webhook retries: webhookFirstRetryMillis 1 to 3600000, webhookMaxRetryMillis from it to 86400000, webhookAttempts 1 to 1000")
        }
    }

    /// The webhook retry rule these settings make.
    public var webhookRetry: WebhookRetryPolicy {
        WebhookRetryPolicy(
            firstDelayMillis: Int64(webhookFirstRetryMillis), maximumDelayMillis: Int64(webhookMaxRetryMillis), maximumAttempts: webhookAttempts)
    }

    /// `maxOfflineWindow` in milliseconds.
    public func maxOfflineWindowMillis() throws -> Int64 { try Self.millis(maxOfflineWindow, "maxOfflineWindow") }

    /// `maxEventAge` in milliseconds; nil when unset.
    public func maxEventAgeMillis() throws -> Int64? { try maxEventAge.map { try Self.millis($0, "maxEventAge") } }

    /// A duration as configured: a whole number and a unit (`s`, `m`, `h`, `d`), from one second
    /// to ten years.
    static func millis(_ text: String, _ name: String) throws -> Int64 {
        let units: [Character: Int64] = ["s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000]
        guard let unit = text.last.flatMap({ units[$0] }), let count = Int64(text.dropLast()), count > 0, count <= 3_650 * 86_400_000 / unit else {
            throw ConfigurationError("\(name) must be a whole number and a unit (s, m, h or d), at most 3650d, got \"\(text)\"")
        }
        return count * unit
    }
}

extension NodeConfiguration.CodingKeys {
    static let allNames = [
        "nodeName", "dataDirectory", "http", "writeKeys", "tokens", "loops", "historyLimit", "secretFile", "keyFile", "logRequests",
        "ingestQueueLimit", "gossip", "seeds", "replicas", "role", "clusterKeyFile", "policyFile", "auditRetentionDays",
        "antiEntropyIntervalSeconds", "maxClockOffsetMillis", "identity", "maxOfflineWindow", "logTruncationIntervalSeconds",
        "retentionSweepSeconds", "retentionSweepShare", "repackPeriodSeconds", "maxEventAge", "webhookFirstRetryMillis", "webhookMaxRetryMillis",
        "webhookAttempts",
        "writeAheadLog", "forgetCompactionIntervalSeconds", "site", "compactOnStart", "compactWhileServing", "compactionFreeFraction",
        "compactionGrowthFraction", "compactionMinimumFreeBytes",
    ]
}

public struct ConfigurationError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
