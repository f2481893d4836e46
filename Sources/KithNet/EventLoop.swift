import CLinux
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One thread's epoll loop. Everything registered with it is touched only on that thread; other
/// threads hand it work with `execute`, which wakes it through an eventfd.
final class EventLoop: @unchecked Sendable {
    private let epoll: Int32
    private let wakeup: Int32
    /// Loop thread only.
    private var handlers: [Int32: (UInt32) -> Void] = [:]
    private var tasks: [() -> Void] = []
    private let incoming = Mutex<[@Sendable () -> Void]>([])
    private let stopRequested = Atomic<Bool>(false)
    /// The thread running the loop (`pthread_self`), 0 before `run`.
    private let owner = Atomic<UInt>(0)
    /// Set by the loop's owner: closes its listener (run on the loop thread). Loop thread only.
    var stopAccepting: (() -> Void)?

    init() throws(SystemError) {
        epoll = try systemValue("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        wakeup = try systemValue("eventfd") { eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC)) }
        try register(wakeup, events: UInt32(EPOLLIN.rawValue)) { [unowned self] _ in self.drainWakeups() }
    }

    deinit {
        close(wakeup)
        close(epoll)
    }

    /// Monotonic time in nanoseconds (shells read clocks; cores are handed time).
    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    func register(_ descriptor: Int32, events: UInt32, _ handler: @escaping (UInt32) -> Void) throws(SystemError) {
        var event = epoll_event(events: events, data: epoll_data_t(fd: descriptor))
        try systemValue("epoll_ctl add") { epoll_ctl(epoll, EPOLL_CTL_ADD, descriptor, &event) }
        handlers[descriptor] = handler
    }

    func modify(_ descriptor: Int32, events: UInt32) throws(SystemError) {
        var event = epoll_event(events: events, data: epoll_data_t(fd: descriptor))
        try systemValue("epoll_ctl mod") { epoll_ctl(epoll, EPOLL_CTL_MOD, descriptor, &event) }
    }

    /// Stops watching `descriptor` (before it is closed).
    func deregister(_ descriptor: Int32) {
        handlers[descriptor] = nil
        _ = try? systemValue("epoll_ctl del") { epoll_ctl(epoll, EPOLL_CTL_DEL, descriptor, nil) }  // closing removes it anyway
    }

    /// Runs `body` on the loop thread soon. Safe from any thread.
    ///
    /// Only the task that finds the queue empty wakes the loop: the loop takes the whole queue
    /// after each wakeup, so later tasks ride on the pending one (a commit answering sixteen
    /// requests costs one eventfd write per loop, not sixteen).
    func execute(_ body: @escaping @Sendable () -> Void) {
        let wasEmpty = incoming.withLock { queue in
            queue.append(body)
            return queue.count == 1
        }
        guard wasEmpty else { return }
        var one: UInt64 = 1
        _ = write(wakeup, &one, 8)
    }

    /// Whether the caller runs on this loop's thread (and may touch what is registered with it).
    var isCurrentThread: Bool { owner.load(ordering: .acquiring) == UInt(pthread_self()) }

    func stop() { execute { [unowned self] in self.stopRequested.store(true, ordering: .relaxed) } }

    /// Runs until `stop`. `tick` runs at least every `tickInterval` nanoseconds (for timeouts).
    func run(tickInterval: UInt64, tick: () -> Void) {
        owner.store(UInt(pthread_self()), ordering: .releasing)
        var events = [epoll_event](repeating: epoll_event(), count: 256)
        var nextTick = Self.now() + tickInterval
        while !stopRequested.load(ordering: .relaxed) {
            let now = Self.now()
            let timeout = Int32(clamping: now >= nextTick ? 0 : (nextTick - now) / 1_000_000 + 1)
            let count = (try? systemValue("epoll_wait") { epoll_wait(epoll, &events, Int32(events.count), timeout) }) ?? 0  // EINTR: wait again
            for event in events.prefix(Int(count)) {
                handlers[event.data.fd]?(event.events)
            }
            if Self.now() >= nextTick {
                tick()
                nextTick = Self.now() + tickInterval
            }
        }
    }

    private func drainWakeups() {
        var value: UInt64 = 0
        _ = read(wakeup, &value, 8)
        let work = incoming.withLock { queue in
            let taken = queue
            queue.removeAll()
            return taken
        }
        for body in work { body() }
    }
}
