using System.Threading.Channels;
using Google.Protobuf;
using Rbs.Agent.Execution;
using Rbs.V1;

namespace Rbs.Agent.Dashboard;

/// <summary>
/// What the gateway's dashboard shows of this agent (rbs.v1.CommandWatch, docs/dashboard.md): the running commands and
/// the last <see cref="RecentLimit"/> ended ones, each with the last <see cref="TailBytes"/> of its output, and the
/// watchers that receive events as they happen. Everything is bounded: a command keeps its tail, not its output (the
/// reattach journal keeps that, for its client only), and a watcher that falls behind loses output (it is told how
/// much) or, when it cannot take a command's start or end, is ended so that it subscribes again and gets a fresh snapshot.
/// Appending never waits: the build tool's output is never slowed down by a dashboard.
/// </summary>
internal sealed class CommandLog(CommandTracker tracker, TimeProvider time)
{
    /// <summary>Ended commands remembered for the dashboard's "recent" list.</summary>
    public const int RecentLimit = 20;

    /// <summary>Output kept per command for a watcher that arrives late: 64 KiB, bazel's last screens.</summary>
    public const int TailBytes = 64 * 1024;

    /// <summary>Concurrent watchers (a gateway watches once per dashboard page of the agent's user).</summary>
    public const int MaxWatchers = 16;

    /// <summary>Events queued per watcher before its output is dropped.</summary>
    public const int WatcherCapacity = 256;

    private readonly Lock _lock = new();
    private readonly List<WatchedEntry> _commands = [];
    private readonly List<Watcher> _watchers = [];
    private int _commandsFinished;

    /// <summary>Records a command that just started; dispose it when the command has ended.</summary>
    public WatchedEntry Begin(string invocationId, IEnumerable<string> args, bool terminal)
    {
        var entry = new WatchedEntry(this, new WatchedCommand
        {
            InvocationId = invocationId,
            Args = { args },
            StartedUnixMillis = time.GetUtcNow().ToUnixTimeMilliseconds(),
            Running = true,
            Terminal = terminal,
        }, time.GetTimestamp());
        lock (_lock)
        {
            _commands.Add(entry);
            Broadcast(new CommandWatchEvent { Command = entry.Info.Clone() });
            Broadcast(new CommandWatchEvent { Activity = ActivityLocked() });
        }

        return entry;
    }

    /// <summary>A new watcher with its snapshot; null when <see cref="MaxWatchers"/> are watching already.</summary>
    public Watcher? Subscribe()
    {
        lock (_lock)
        {
            if (_watchers.Count >= MaxWatchers)
            {
                return null;
            }

            var snapshot = new List<CommandWatchEvent> { new() { Activity = ActivityLocked() } };
            foreach (var entry in _commands)
            {
                // Its start first (as a watcher present then saw it), then its tail, then (if it ended) its end.
                var started = entry.Info.Clone();
                started.Running = true;
                started.ExitCode = 0;
                started.Signal = 0;
                started.DurationMillis = 0;
                snapshot.Add(new CommandWatchEvent { Command = started });
                if (entry.DroppedBytes > 0)
                {
                    snapshot.Add(new CommandWatchEvent { Gap = new WatchedOutputGap { InvocationId = entry.Info.InvocationId, Bytes = entry.DroppedBytes } });
                }

                foreach (var (stdout, data) in entry.Tail)
                {
                    snapshot.Add(new CommandWatchEvent { Output = new WatchedOutput { InvocationId = entry.Info.InvocationId, Stdout = stdout, Data = data } });
                }

                if (!entry.Info.Running)
                {
                    snapshot.Add(new CommandWatchEvent { Command = entry.Info.Clone() });
                }
            }

            var watcher = new Watcher(this, snapshot);
            _watchers.Add(watcher);
            return watcher;
        }
    }

    private AgentActivity ActivityLocked() => new()
    {
        RunningCommands = _commands.Count(c => c.Info.Running),
        CommandsFinished = _commandsFinished,
        StartedUnixMillis = tracker.StartedAt.ToUnixTimeMilliseconds(),
        LastActivityUnixMillis = tracker.LastActivity.ToUnixTimeMilliseconds(),
    };

    private void Append(WatchedEntry entry, bool stdout, ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty)
        {
            return;
        }

        var kept = data.Length > TailBytes ? data[^TailBytes..] : data;
        lock (_lock)
        {
            entry.Keep(stdout, kept, data.Length - kept.Length);
            if (_watchers.Count == 0)
            {
                // The common case: nobody watches, and the tail's ring took the bytes without an allocation.
                return;
            }

            var bytes = ByteString.CopyFrom(kept);
            foreach (var watcher in _watchers)
            {
                watcher.OfferOutput(entry.Info.InvocationId, stdout, bytes);
            }
        }
    }

    private void End(WatchedEntry entry, int exitCode, int signal)
    {
        lock (_lock)
        {
            _commandsFinished++;
            entry.Info.Running = false;
            entry.Info.ExitCode = exitCode;
            entry.Info.Signal = signal;
            entry.Info.DurationMillis = (long)time.GetElapsedTime(entry.StartedTimestamp).TotalMilliseconds;
            var ended = _commands.Where(c => !c.Info.Running).ToList();
            for (var i = 0; i < ended.Count - RecentLimit; i++)
            {
                _commands.Remove(ended[i]);
            }

            Broadcast(new CommandWatchEvent { Command = entry.Info.Clone() });
            Broadcast(new CommandWatchEvent { Activity = ActivityLocked() });
        }
    }

    private void Broadcast(CommandWatchEvent e)
    {
        foreach (var watcher in _watchers.ToArray())
        {
            if (!watcher.Offer(e))
            {
                // It cannot take a start or an end: end it; the gateway subscribes again and gets a fresh snapshot.
                watcher.Overrun();
                _watchers.Remove(watcher);
            }
        }
    }

    private void Unsubscribe(Watcher watcher)
    {
        lock (_lock)
        {
            _watchers.Remove(watcher);
        }
    }

    /// <summary>One command as the dashboard sees it; output is appended by the command's single frame reader.</summary>
    internal sealed class WatchedEntry(CommandLog log, WatchedCommand info, long startedTimestamp) : IDisposable
    {
        private readonly OutputTail _tail = new(TailBytes);
        private int _ended;

        public WatchedCommand Info { get; } = info;

        public long StartedTimestamp { get; } = startedTimestamp;

        /// <summary>Output no longer in the tail (under the log's lock).</summary>
        public long DroppedBytes => _tail.DroppedBytes;

        /// <summary>The tail's pieces in order, as copies (under the log's lock).</summary>
        public IEnumerable<(bool Stdout, ByteString Data)> Tail => _tail.Pieces();

        /// <summary>A frame on its way to the client: its stdout or stderr bytes are kept and shown (other frames are ignored).</summary>
        public void Append(ServerFrame frame)
        {
            switch (frame.FrameCase)
            {
                case ServerFrame.FrameOneofCase.Stdout:
                    log.Append(this, stdout: true, frame.Stdout.Span);
                    break;
                case ServerFrame.FrameOneofCase.Stderr:
                    log.Append(this, stdout: false, frame.Stderr.Span);
                    break;
                default:
                    break;
            }
        }

        /// <summary>The command ended with its exit code (and signal).</summary>
        public void Complete(int exitCode, int signal)
        {
            if (Interlocked.Exchange(ref _ended, 1) == 0)
            {
                log.End(this, exitCode, signal);
            }
        }

        /// <summary>Ended without an exit status (the agent failed to supervise it): shown as the remote-environment error 34.</summary>
        public void Dispose() => Complete(34, 0);

        internal void Keep(bool stdout, ReadOnlySpan<byte> data, int dropped) => _tail.Add(stdout, data, dropped);
    }

    /// <summary>A subscription: its snapshot, then its events. Dispose it when the call ends.</summary>
    internal sealed class Watcher : IDisposable
    {
        private readonly CommandLog _log;
        private readonly Channel<CommandWatchEvent> _events = Channel.CreateBounded<CommandWatchEvent>(
            new BoundedChannelOptions(WatcherCapacity) { SingleReader = true, SingleWriter = true, FullMode = BoundedChannelFullMode.Wait });

        // Output this watcher lost per invocation, sent as a gap marker when there is room again (under the log's lock).
        private readonly Dictionary<string, long> _lost = new(StringComparer.Ordinal);

        internal Watcher(CommandLog log, IReadOnlyList<CommandWatchEvent> snapshot)
        {
            _log = log;
            Snapshot = snapshot;
        }

        public IReadOnlyList<CommandWatchEvent> Snapshot { get; }

        public ChannelReader<CommandWatchEvent> Events => _events.Reader;

        /// <summary>True once it fell too far behind to be told a command's start or end (it must subscribe again).</summary>
        public bool Overran { get; private set; }

        public void Dispose() => _log.Unsubscribe(this);

        internal bool Offer(CommandWatchEvent e) => _events.Writer.TryWrite(e);

        internal void OfferOutput(string invocationId, bool stdout, ByteString data)
        {
            if (_lost.TryGetValue(invocationId, out var lost))
            {
                if (!_events.Writer.TryWrite(new CommandWatchEvent { Gap = new WatchedOutputGap { InvocationId = invocationId, Bytes = lost } }))
                {
                    _lost[invocationId] = lost + data.Length;
                    return;
                }

                _lost.Remove(invocationId);
            }

            if (!_events.Writer.TryWrite(new CommandWatchEvent { Output = new WatchedOutput { InvocationId = invocationId, Stdout = stdout, Data = data } }))
            {
                _lost[invocationId] = _lost.GetValueOrDefault(invocationId) + data.Length;
            }
        }

        internal void Overrun()
        {
            Overran = true;
            _events.Writer.TryComplete();
        }
    }
}
