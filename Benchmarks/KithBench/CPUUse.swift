import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// What a measured run cost the machine: the CPU time of the servers (each a process and its
/// descendants, all their threads) and of the client, over the run's wall time. On two shared
/// cores a server's rate is bounded by what one operation costs the server and the client
/// together, so these figures say where a ratio comes from.
struct CPUUse {
    var serverSeconds: Double
    var clientSeconds: Double
    var wallSeconds: Double

    /// Cores busy with the run on average.
    var busyCores: Double { (serverSeconds + clientSeconds) / wallSeconds }

    /// Runs `body` (which runs the client to its end, as a child of this process) and measures
    /// the processes rooted at `servers` meanwhile.
    static func measure<Result>(servers: [Int32], _ body: () throws -> Result) rethrows -> (Result, CPUUse) {
        let serverBefore = treeSeconds(of: servers)
        let clientBefore = waitedChildrenSeconds()
        let started = DispatchTime.now().uptimeNanoseconds
        let result = try body()
        let wall = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        let serverAfter = treeSeconds(of: servers)
        return (
            result,
            CPUUse(serverSeconds: serverAfter - serverBefore, clientSeconds: waitedChildrenSeconds() - clientBefore, wallSeconds: wall)
        )
    }

    /// User and system seconds of the processes `roots`, their live descendants, and the
    /// children they have waited for (PostgreSQL's backends end with their connections; their
    /// time moves to the postmaster's waited-children fields, so a tree's total only grows).
    /// One reading of `/proc` for all of them.
    static func treeSeconds(of roots: [Int32]) -> Double {
        let processes = allProcesses()
        var children: [Int32: [Int32]] = [:]
        for (pid, process) in processes { children[process.parent, default: []].append(pid) }
        var total = 0.0
        var pending = roots
        while let next = pending.popLast() {
            guard let process = processes[next] else { continue }
            total += process.seconds + process.waitedChildrenSeconds
            pending += children[next, default: []]
        }
        return total
    }

    /// CPU seconds of this process's children that have ended and been waited for: clients
    /// (wrk, pgbench) run to their end inside `measure`.
    static func waitedChildrenSeconds() -> Double {
        var usage = rusage()
        guard getrusage(__rusage_who_t(RUSAGE_CHILDREN.rawValue), &usage) == 0 else { return 0 }
        func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    private static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    private struct ProcessStat {
        var parent: Int32
        var seconds: Double
        var waitedChildrenSeconds: Double
    }

    /// `/proc/PID/stat`: after the command's closing parenthesis come the state (field 3), the
    /// parent (4), ..., utime and stime (14, 15), cutime and cstime (16, 17), in clock ticks.
    private static func stat(of pid: Int32) -> ProcessStat? {
        // A process that ended between listing and reading has nothing more to count.
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 14, let parent = Int32(fields[1]) else { return nil }
        let ticks = (11...14).map { Double(fields[$0]) ?? 0 }
        return ProcessStat(
            parent: parent, seconds: (ticks[0] + ticks[1]) / ticksPerSecond, waitedChildrenSeconds: (ticks[2] + ticks[3]) / ticksPerSecond)
    }

    /// Every process's figures, read once.
    private static func allProcesses() -> [Int32: ProcessStat] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []  // no /proc: nothing to count
        var processes: [Int32: ProcessStat] = [:]
        for pid in entries.compactMap(Int32.init) { processes[pid] = stat(of: pid) }
        return processes
    }
}
