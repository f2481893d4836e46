import KithCRDT
import KithCluster
import KithJSON
import KithProfile
import KithReplication
import KithStore
import KithTestSupport
import Testing

/// Who reads a scoped site's log (docs/replication.md, "Site syncs"): the cores alone. They
/// alone answer its syncs, so they alone can quarantine it; a full edge gets its writes through
/// the cores' logs. And the site keeps its log for every core, however long one is silent: the
/// log is the only way its writes ever leave it.
@Suite("A scoped site's log")
struct SiteLogTests {
    static let core = Member(id: 1, name: "n1", address: "n1", role: .core)
    static let edge = Member(id: 2, name: "n2", address: "n2", role: .edge)
    static let site = Member(id: 6, name: "n6", address: "n6", role: .edge, scoped: true)

    static func message(_ id: String) throws -> ProfileDelta {
        try SegmentMessageParser().parse(
            try JSONParser.parse(Array(#"{"type":"identify","userId":"u-1","messageId":"\#(id)"}"#.utf8)), receivedAt: 1_000)
    }

    /// A full edge pulls the core and not the site, and takes neither a push nor a pull reply
    /// from it; a core pulls the site.
    @Test func onlyCoresReadASitesLog() throws {
        for me in [Self.edge, Self.core] {
            let store = MemoryProfileStore(configuration: StoreConfiguration(node: me.id, forgetKeySecret: Simulation.secret))
            var sent: [(String, PeerMessage)] = []
            let node = try ClusterNode(store: store, me: me, seeds: [], seed: 1) { sent.append(($0, $1)) }
            let others = [Self.core, Self.edge, Self.site].filter { $0.id != me.id }
            try node.receive(
                .membership(MembershipMessage(sender: others[0], kind: .join, updates: others)), from: others[0].id, address: others[0].address,
                now: 0)
            var pulled: Set<String> = []
            for now in stride(from: Int64(0), through: 3_000, by: 100) {
                sent.removeAll()
                try node.tick(now: now)
                for (address, message) in sent { if case .pull = message { pulled.insert(address) } }
                // Every pull is answered at once with nothing, so the next one goes.
                for (address, message) in sent {
                    guard case .pull(let cursor, _, _, let request, _) = message, let peer = others.first(where: { $0.address == address })
                    else { continue }
                    try node.receive(
                        .changes(from: cursor, through: cursor, entries: [], more: false, ahead: [], request: request), from: peer.id,
                        address: address, now: now)
                }
            }
            let delta = try Self.message("s-1")
            let push = PeerMessage.push(previous: 0, entries: [ChangeEntry(sequence: 1, origin: 6, originSequence: 1, change: .message(delta))])
            try node.receive(push, from: 6, address: "n6", now: 3_100)
            if me.role == .core {
                #expect(try pulled.contains("n6") && store.hasMessage(delta.messageId, subject: delta.subject), "a core reads and takes a site's log")
            } else {
                #expect(!pulled.contains("n6") && pulled.contains("n1"), "an edge pulled \(pulled)")
                #expect(try !store.hasMessage(delta.messageId, subject: delta.subject) && node.counters.rawDataRefused == 1)
            }
        }
    }

    /// A site truncates only what every core has read, and a core silent past the window still
    /// holds its log back there; its pushes go to cores only.
    @Test func aSiteKeepsItsLogForACoreAwayPastTheWindow() throws {
        let store = MemoryProfileStore(configuration: StoreConfiguration(node: 6, forgetKeySecret: Simulation.secret))
        var settings = ReplicationSettings()
        settings.site = SiteSettings(scope: .everything, purposes: [])
        settings.truncationInterval = 100
        settings.maxOfflineWindow = 1_000
        var sent: [(String, PeerMessage)] = []
        let node = try ClusterNode(store: store, me: Self.site, seeds: [], settings: settings, seed: 1) { sent.append(($0, $1)) }
        let away = Member(id: 3, name: "n3", address: "n3", role: .core)
        try node.tick(now: 0)  // silence is counted from here
        try node.receive(
            .membership(MembershipMessage(sender: Self.core, kind: .join, updates: [Self.core, away, Self.edge])), from: 1, address: "n1", now: 0)
        try store.apply([try Self.message("s-1"), try Self.message("s-2")])
        sent.removeAll()
        try node.pushOwnChanges()
        #expect(Set(sent.map(\.0)) == ["n1", "n3"], "pushed to \(sent.map(\.0))")
        // n1 reads the whole log; n3 never pulls, silent far past the window; the edge reads nothing.
        try node.receive(.pull(cursor: 2, versions: VersionVector([6: 2]), budget: 1_024, request: 1), from: 1, address: "n1", now: 5_000)
        for now in stride(from: Int64(5_000), through: 6_000, by: 100) { try node.tick(now: now) }
        #expect(try store.logExtent().truncatedThrough == 0, "truncated while n3 had read nothing")
        #expect(node.logTruncationPlan?.readers.map(\.name) == ["n1", "n3"], "the edge does not read a site's log")
        // n3 reads it too: now it may go.
        try node.receive(.pull(cursor: 2, versions: VersionVector([6: 2]), budget: 1_024, request: 1), from: 3, address: "n3", now: 6_100)
        for now in stride(from: Int64(6_200), through: 6_600, by: 100) { try node.tick(now: now) }
        #expect(try store.logExtent().truncatedThrough == 2)
    }
}

/// What an idle site does at each sync: it reuses its report (no read and hash of everything
/// it holds) and writes nothing, until its store commits something.
@Suite("An idle site's syncs")
struct IdleSiteTests {
    @Test func anIdleSiteReusesItsReportUntilItsStoreChanges() throws {
        let store = MemoryProfileStore(configuration: StoreConfiguration(node: 6, forgetKeySecret: Simulation.secret))
        try store.apply([try SiteLogTests.message("s-1")])
        var settings = ReplicationSettings()
        settings.site = SiteSettings(scope: .everything, purposes: [])
        settings.siteSyncInterval = 100
        var sent: [(String, PeerMessage)] = []
        let node = try ClusterNode(store: store, me: SiteLogTests.site, seeds: [], settings: settings, seed: 1) { sent.append(($0, $1)) }
        try node.receive(
            .membership(MembershipMessage(sender: SiteLogTests.core, kind: .join, updates: [SiteLogTests.core])), from: 1, address: "n1", now: 0)
        /// One sync at `now`, answered with nothing to do: the summary it carried.
        func sync(at now: Int64) throws -> Digest128? {
            sent.removeAll()
            try node.tick(now: now)
            for (_, message) in sent {
                guard case .siteSync(let request, _, _, let summary, _, _) = message else { continue }
                try node.receive(.siteUpdate(request: request, components: [], purge: [], more: false), from: 1, address: "n1", now: now + 5)
                return summary
            }
            return nil
        }
        let first = try #require(try sync(at: 0))
        let commit = try store.lastCommit()
        for now in stride(from: Int64(200), through: 1_000, by: 200) { #expect(try sync(at: now) == first) }
        #expect(node.counters.siteReportsWorkedOut == 1 && node.counters.siteSyncsCompleted == 6)
        #expect(try store.lastCommit() == commit, "an empty update is not written")
        // The site takes a message: the next report is worked out again, and differs.
        try store.apply([try SiteLogTests.message("s-2")])
        let changed = try #require(try sync(at: 1_200))
        #expect(changed != first && node.counters.siteReportsWorkedOut == 2)
    }
}

/// A node behind a scoped site's truncated log (`SiteLogRecovery`): whom it compares trees with,
/// and which sites' logs a comparison lets it read on.
@Suite("Recovering a site's truncated log")
struct SiteLogRecoveryTests {
    @Test func comparesWithTheFirstCoreThatHeldTheSitesChanges() {
        let site: UInt64 = 6
        let cores: [(id: UInt64, versions: VersionVector?)] = [
            (3, VersionVector([site: 40])), (1, VersionVector([site: 9])), (2, nil), (4, VersionVector([site: 60])),
        ]
        #expect(SiteLogRecovery.coreToCompare(site: site, through: 40, cores: cores) == 3)
        #expect(SiteLogRecovery.coreToCompare(site: site, through: 9, cores: cores) == 1)
        #expect(SiteLogRecovery.coreToCompare(site: site, through: 61, cores: cores) == nil, "no core held that far yet")
        #expect(SiteLogRecovery.coreToCompare(site: 7, through: 1, cores: cores) == nil, "another site's changes")
        #expect(SiteLogRecovery.coreToCompare(site: site, through: 1, cores: []) == nil)
    }

    @Test func readsOnTheLogsOfTheSitesThePeerHeldThatFar() {
        let held = VersionVector([6: 40, 7: 5])
        #expect(SiteLogRecovery.logsToResume(held: held, behind: [6: 40, 7: 6, 8: 1]) == [6: 40])
        #expect(SiteLogRecovery.logsToResume(held: held, behind: [6: 12, 7: 5]) == [6: 12, 7: 5])
        #expect(SiteLogRecovery.logsToResume(held: held, behind: [:]).isEmpty)
    }
}

/// A member that knows no one (restarted, and not heard back from its seeds) pushes what it
/// accepts to its seeds: it may be heard where it cannot hear, and a write only it holds would
/// otherwise wait there until it is quarantined as silent and drops it (seeds 226 and 248 of
/// the scoped-site forget scenario: a deaf member restarted and lost acknowledged writes).
@Suite("Pushes of a member that knows no one")
struct PushesWithoutMembersTests {
    @Test func aMemberThatKnowsNoOnePushesToItsSeeds() throws {
        for me in [SiteLogTests.core, SiteLogTests.edge] {
            let store = MemoryProfileStore(configuration: StoreConfiguration(node: me.id, forgetKeySecret: Simulation.secret))
            var sent: [(String, PeerMessage)] = []
            let node = try ClusterNode(store: store, me: me, seeds: ["n2", "n3"], seed: 1) { sent.append(($0, $1)) }
            try store.apply([try SiteLogTests.message("w-\(me.id)")])
            try node.pushOwnChanges()
            let pushedTo = sent.compactMap { address, message in if case .push = message { address } else { nil } }
            #expect(pushedTo == ["n2", "n3"].filter { $0 != me.address }, "\(me.name) pushed to \(pushedTo)")
            // Once it knows members, it pushes to them as usual, and no longer to the seeds as such.
            let other = me.id == SiteLogTests.core.id ? SiteLogTests.edge : SiteLogTests.core
            try node.receive(
                .membership(MembershipMessage(sender: other, kind: .join, updates: [other])), from: other.id, address: other.address, now: 0)
            sent.removeAll()
            try store.apply([try SiteLogTests.message("x-\(me.id)")])
            try node.pushOwnChanges()
            #expect(!sent.contains { address, message in if case .push = message { address == "n3" } else { false } })
        }
    }
}
