import KithCRDT
import KithPolicy
import KithProfile
import KithReplication
import KithStore

/// A scoped site: what it holds and for which purposes (docs/replication.md, "Scope").
public struct SiteSettings: Equatable, Sendable {
    public var scope: Scope
    public var purposes: [String]

    public init(scope: Scope, purposes: [String]) {
        self.scope = scope
        self.purposes = purposes
    }
}

/// A scoped site's side of site syncs: the one in flight, and when the last ended.
struct SiteSyncing {
    var request: UInt64 = 0
    var sentAt: Int64?
    var lastCompleted: Int64?
    /// The core said it had more to send: sync again at once.
    var more = false
    /// An update's write is queued or running.
    var writing = false
    /// The sync in flight: to which core, with which report's summary, and the page of the
    /// report it carried (nil: the summary alone).
    var core: UInt64?
    var summary = Digest128.zero
    var page: ReportPage?
    /// Core → the summary of the report it last took whole from this site: an unchanged report
    /// goes to it as its summary alone.
    var reported: [UInt64: Digest128] = [:]
    /// Core → where the next page of the report it is being sent starts (a report in pages).
    var nextPage: [UInt64: Identifier] = [:]
    /// The last report worked out, its summary, and the store's last commit before it: an idle
    /// site reuses it rather than read and hash everything it holds at every sync.
    var report: (commit: UInt64, held: [HeldDocument], summary: Digest128)?

    /// The sync in flight is over (answered, or its write done): the next is due an interval on.
    mutating func ended(at now: Int64) {
        sentAt = nil
        lastCompleted = now
    }
}

/// A core's memory of one scoped site between its syncs: how far its sweep over every
/// identifier and its reading of this node's log have gone, and what an earlier sync's budget
/// left over. Lost at a restart, which only starts the sweep again.
struct SiteTracking {
    var sweep = BucketWalkPosition.start
    var sweptOnce = false
    /// This node's log through this position has been looked at for the site.
    var logCursor: UInt64
    var pending: [Identifier] = []
    /// The site's last report, and its summary: a sync with the same summary reuses it.
    var report: [HeldDocument] = []
    var summary: Digest128?
    /// The scope and purposes of its last sync: when they change, the sweep starts again as for
    /// a first sync, so that the customers the site now holds reach it soon.
    var scope: Scope?
    var purposes: [String] = []
    /// The projected digest of each held document as this node last worked it out, and syncs
    /// since it last looked at every reported document: a reported document its log has not
    /// written since, with that digest, is not looked at again (`SiteSync.update`'s
    /// `unchanged`) but every `siteFullCheck` syncs — what changed with no log entry (a
    /// repair, an expiry) or with time alone (a `seen` window) is caught then, or by the sweep.
    var projected: [Identifier: Digest128] = [:]
    var syncsSinceFullCheck = 0

    /// Forgets what this node knew the site holds and sweeps every identifier again, as for a
    /// first sync: its scope or purposes changed, or log entries it had not looked at are gone.
    mutating func lookAgainAtEverything() {
        (sweep, sweptOnce, projected) = (.start, false, [:])
    }
}

extension Member {
    /// Whether this member answers scoped sites' syncs and reads their logs: a core that holds
    /// everything (docs/replication.md, "Scope").
    public var answersSiteSyncs: Bool { role == .core && holdsEverything }
}

extension ClusterNode {
    // MARK: The site's side

    /// A scoped site syncs with a core when the last sync ended `siteSyncInterval` ago, or at
    /// once when the core said it has more; a sync not answered within `pullTimeout` is given up.
    func syncSiteIfDue(now: Int64) throws {
        // While it clears for a quarantine a site takes nothing in: it syncs again once done.
        guard let site = settings.site, !siteSyncing.writing, try !isClearing else { return }
        if let sent = siteSyncing.sentAt {
            guard now - sent >= settings.pullTimeout else { return }
            siteSyncing.sentAt = nil
            counters.siteSyncsAbandoned += 1
        }
        if let last = siteSyncing.lastCompleted, !siteSyncing.more, now - last < settings.siteSyncInterval { return }
        // The core syncs rotate, so that one core's sweep does not decide alone for long; a
        // report going in pages goes on to the core taking it.
        let cores = membership.reachable.filter(\.answersSiteSyncs).sorted { $0.id < $1.id }
        guard !cores.isEmpty else { return }
        siteSyncing.request += 1
        let core =
            cores.first { siteSyncing.nextPage[$0.id] != nil } ?? cores[Int(siteSyncing.request % UInt64(cores.count))]
        let (held, summary) = try currentReport()
        var page: ReportPage?
        if siteSyncing.reported[core.id] != summary {
            let after = siteSyncing.nextPage[core.id]
            let start = after.map { after in held.firstIndex { $0.identifier > after } ?? held.count } ?? 0
            let end = min(held.count, start + settings.siteReportPage)
            page = ReportPage(after: after, documents: Array(held[start..<end]), last: end == held.count)
        }
        siteSyncing.sentAt = now
        siteSyncing.core = core.id
        siteSyncing.summary = summary
        siteSyncing.page = page
        counters.siteSyncsSent += 1
        if page == nil { counters.siteSummariesSent += 1 }
        send(
            core.address,
            .siteSync(
                request: siteSyncing.request, scope: site.scope, purposes: site.purposes, summary: summary, page: page,
                cleared: try compactionState().clearedThrough))
    }

    /// Every document this site holds with its digest, and the summary: worked out again only
    /// when the store committed something since the last time (its last commit is read first,
    /// so a commit during the read makes the next sync work it out again).
    private func currentReport() throws -> (held: [HeldDocument], summary: Digest128) {
        let commit = try store.lastCommit()
        if let report = siteSyncing.report, report.commit == commit { return (report.held, report.summary) }
        let held = try store.heldDocuments()
        let summary = HeldDocument.summary(of: held)
        siteSyncing.report = (commit, held, summary)
        counters.siteReportsWorkedOut += 1
        return (held, summary)
    }

    /// A core's update, applied through the writer (`ProfileStore.applySiteUpdate`); or the
    /// core's quarantine, cleared for (`clearForQuarantine`, as a member told by an answer to its
    /// pull does) before the site syncs again.
    func receivedSiteUpdate(
        request: UInt64, components: [[DocumentState]], purge: [Identifier], more: Bool, reportWanted: Bool, dropThrough: Int64?,
        from core: UInt64, now: Int64, wall: Int64
    ) throws {
        guard settings.site != nil, request == siteSyncing.request, siteSyncing.sentAt != nil, !siteSyncing.writing, core == siteSyncing.core,
            try !isClearing
        else {
            return counters.staleSiteUpdatesDropped += 1
        }
        if let dropThrough {
            siteSyncing.ended(at: now)
            return try clearForQuarantine(through: dropThrough, wall: wall)
        }
        if reportWanted {
            // The core does not know the summary sent (it restarted): the report goes at once.
            siteSyncing.reported[core] = nil
            siteSyncing.nextPage[core] = nil
            siteSyncing.sentAt = nil
            siteSyncing.more = true
            return counters.siteReportsWanted += 1
        }
        var more = more
        if let page = siteSyncing.page {
            if page.last {
                siteSyncing.reported[core] = siteSyncing.summary
                siteSyncing.nextPage[core] = nil
            } else {
                siteSyncing.nextPage[core] = page.documents.last?.identifier
                more = true
            }
        }
        if components.isEmpty && purge.isEmpty {
            // Nothing to apply (an idle site's every sync): no write, and the store's last
            // commit stays, so the next sync reuses the report.
            siteSyncing.ended(at: now)
            siteSyncing.more = more
            return counters.siteSyncsCompleted += 1
        }
        siteSyncing.writing = true
        let store = self.store
        // A failed write is counted and the next sync starts over: the continuation must run on
        // every path, or `writing` would stay set and the site would never sync again.
        try write({
            var written = ReplicatedWrite()
            do { written.site = try store.applySiteUpdate(components: components, purge: purge) } catch {
                return .refusal
            }
            return written
        }) { [self] written in
            siteSyncing.writing = false
            siteSyncing.ended(at: now)
            guard !written.refused, let outcome = written.site else { return counters.siteUpdatesFailed += 1 }
            siteSyncing.more = more
            counters.siteSyncsCompleted += 1
            counters.siteDocumentsJoined += outcome.joined
            counters.sitePurged += outcome.purged
            counters.siteReplaced += outcome.replaced
        }
    }

    // MARK: The core's side

    /// Answers a scoped site's sync (`SiteSync`): looks at the components of what the site
    /// reported, of what this node's log wrote since the site's last sync, and of the next step
    /// of a sweep over every identifier held; sends the projected states of held components the
    /// site lacks or holds otherwise, up to `documentBudget` bytes, and names the reported
    /// documents of components it does not hold.
    func answerSiteSync(
        from sender: UInt64, address: String, request: UInt64, scope: Scope, purposes: [String], summary: Digest128, page: ReportPage?,
        cleared: Int64?, now: Int64
    ) throws {
        guard answersSiteSyncs, membership.members[sender]?.scoped == true else {
            return counters.siteSyncsRefused += 1
        }
        // A site is quarantined as a member that pulls is (`ForgetCompactionGate`): told how far
        // to drop, and neither read nor sent anything until it says it has.
        let trusted = try heardCleared(cleared, from: sender)
        guard trusted.now else {
            counters.quarantinedMessagesRefused += 1
            return send(
                replyAddress(sender, address),
                .siteUpdate(request: request, components: [], purge: [], more: false, dropThrough: try compactionState().compactedThrough))
        }
        let holdings: SiteHoldings
        do {
            holdings = try SiteHoldings(scope: scope, purposes: purposes, policy: settings.policy)
        } catch {
            // A site whose purposes this node's policy does not define gets nothing: it may
            // not be sent what no purpose here says it may see.
            return counters.siteSyncsRefused += 1
        }
        let extent = try store.logExtent()
        var tracking = sites[sender] ?? SiteTracking(logCursor: extent.last)
        if let page {
            // The report as its pages so far make it: the same as the site's once a whole
            // report has come with no change meanwhile (then its summary is the site's).
            tracking.report = page.applied(to: tracking.report)
            tracking.summary = page.last ? HeldDocument.summary(of: tracking.report) : nil
        } else if tracking.summary != summary {
            // Only a summary, of a report this node never took (or forgot at a restart).
            sites[sender] = tracking
            return send(replyAddress(sender, address), .siteUpdate(request: request, components: [], purge: [], more: true, reportWanted: true))
        }
        if tracking.scope != scope || tracking.purposes != purposes || !trusted.before {
            // A new scope, or a site that has just cleared (it lacks what it dropped that was
            // not erased): everything it holds is looked at again soon.
            (tracking.scope, tracking.purposes) = (scope, purposes)
            tracking.lookAgainAtEverything()
        }
        let reported = tracking.report
        if extent.truncatedThrough > tracking.logCursor {
            // What was logged meanwhile is gone: the sweep finds it instead.
            tracking.lookAgainAtEverything()
            tracking.logCursor = extent.last
        }
        let logged = try store.changes(after: tracking.logCursor, limit: settings.scanLimit)
        let written = Set(logged.flatMap(\.identifiersWritten))
        tracking.logCursor = logged.last?.sequence ?? tracking.logCursor
        tracking.syncsSinceFullCheck += 1
        if tracking.syncsSinceFullCheck >= settings.siteFullCheck {
            tracking.syncsSinceFullCheck = 0
            tracking.projected = [:]
        }
        var unchanged: [Identifier: Digest128] = [:]
        for document in reported where !written.contains(document.identifier) && tracking.projected[document.identifier] == document.digest {
            unchanged[document.identifier] = document.digest
        }
        var candidates = reported.map(\.identifier).filter { unchanged[$0] == nil } + tracking.pending + written.sorted()
        let step = try store.identifiers(
            from: tracking.sweep, buckets: tracking.sweptOnce ? 8 : 64, limit: tracking.sweptOnce ? settings.siteSweep : settings.siteSweepFirst)
        candidates += step.identifiers
        tracking.sweep = step.next.isAtEnd ? .start : step.next
        if step.next.isAtEnd { tracking.sweptOnce = true }

        let update = try SiteSync.update(
            for: holdings, reported: reported, candidates: candidates, unchanged: unchanged, in: store, now: now)
        for identifier in update.looked { tracking.projected[identifier] = update.states[identifier]?.contentDigest }
        counters.siteDocumentsLooked += update.looked.count
        let (components, left) = update.components(budget: settings.documentBudget)
        tracking.pending = left
        sites[sender] = tracking
        counters.siteDocumentsSent += components.reduce(0) { $0 + $1.count }
        send(
            replyAddress(sender, address),
            .siteUpdate(request: request, components: components, purge: update.answer.purge, more: !left.isEmpty || !tracking.sweptOnce))
    }
}
