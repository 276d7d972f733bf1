using Google.Protobuf;
using Microsoft.Extensions.Time.Testing;
using Rbs.Agent.Dashboard;
using Rbs.Agent.Execution;
using Rbs.V1;

namespace Rbs.Tests.Agent.Dashboard;

/// <summary>The agent's side of the dashboard (Agent/Dashboard/CommandLog.cs): what a watcher gets, and its bounds.</summary>
public sealed class CommandLogTests
{
    private readonly FakeTimeProvider _time = new(DateTimeOffset.UnixEpoch.AddDays(1));
    private readonly CommandLog _log;

    public CommandLogTests()
    {
        _log = new CommandLog(new CommandTracker(_time), _time);
    }

    [Fact]
    public void ALateWatcherGetsEachCommandWithItsOutputTailAndTheEndAfterTheTail()
    {
        using (var first = _log.Begin("inv-1", ["build", "//..."], terminal: true))
        {
            first.Append(Stderr("\u001b[32mINFO:\u001b[0m done\n"));
            _time.Advance(TimeSpan.FromMilliseconds(1500));
            first.Complete(3, 0);
        }

        using var running = _log.Begin("inv-2", ["test", "//..."], terminal: false);
        running.Append(new ServerFrame { Stdout = ByteString.CopyFromUtf8("out") });

        using var watcher = _log.Subscribe()!;
        var events = watcher.Snapshot;
        Assert.Equal(1, events[0].Activity.RunningCommands);
        Assert.Equal(1, events[0].Activity.CommandsFinished);
        Assert.Equal(
            ["command inv-1 running=True", "output inv-1 stderr", "command inv-1 running=False", "command inv-2 running=True", "output inv-2 stdout"],
            events.Skip(1).Select(Describe));
        var ended = events[3].Command;
        Assert.Equal(3, ended.ExitCode);
        Assert.Equal(1500, ended.DurationMillis);
        Assert.Equal(["build", "//..."], ended.Args);
        Assert.Equal("\u001b[32mINFO:\u001b[0m done\n", events[2].Output.Data.ToStringUtf8());
    }

    [Fact]
    public void AnOutputTailKeepsTheLastBytesAndSaysHowManyWentBefore()
    {
        using var command = _log.Begin("inv", ["build"], terminal: false);
        var chunk = new string('x', 10_000) + "\n";
        for (var i = 0; i < 20; i++)
        {
            command.Append(Stderr(chunk));
        }

        using var watcher = _log.Subscribe()!;
        var tail = watcher.Snapshot.Where(e => e.EventCase == CommandWatchEvent.EventOneofCase.Output).Sum(e => e.Output.Data.Length);
        var gap = Assert.Single(watcher.Snapshot, e => e.EventCase == CommandWatchEvent.EventOneofCase.Gap).Gap.Bytes;
        Assert.True(tail <= CommandLog.TailBytes, $"tail of {tail} bytes");
        Assert.Equal(20 * chunk.Length, tail + gap);
    }

    [Fact]
    public void AWatcherThatFallsBehindLosesOutputWithAGapMarkerAndIsEndedWhenItCannotTakeAnEnd()
    {
        using var command = _log.Begin("inv", ["build"], terminal: false);
        using var watcher = _log.Subscribe()!;
        // Nobody reads: the queue fills, and output beyond it is counted, never queued.
        for (var i = 0; i < CommandLog.WatcherCapacity + 10; i++)
        {
            command.Append(Stderr("line\n"));
        }

        Assert.Equal(CommandLog.WatcherCapacity, watcher.Events.Count);
        Assert.False(watcher.Overran);

        // Room again: the next output comes after a marker of what was lost.
        for (var i = 0; i < 5; i++)
        {
            Assert.True(watcher.Events.TryRead(out _));
        }

        command.Append(Stderr("after\n"));
        var drained = Drain(watcher);
        var gap = drained[^2];
        Assert.Equal(CommandWatchEvent.EventOneofCase.Gap, gap.EventCase);
        Assert.Equal(10 * "line\n".Length, gap.Gap.Bytes);
        Assert.Equal("after\n", drained[^1].Output.Data.ToStringUtf8());

        // Full again and the command ends: the watcher cannot be told, so it is ended (it watches again for a snapshot).
        for (var i = 0; i < CommandLog.WatcherCapacity; i++)
        {
            command.Append(Stderr("more\n"));
        }

        command.Complete(0, 0);
        Assert.True(watcher.Overran);
        Assert.Equal(CommandLog.WatcherCapacity, Drain(watcher).Count);
        Assert.True(watcher.Events.Completion.IsCompleted);
    }

    [Fact]
    public void OnlyTheLastRecentCommandsAreKeptAndWatchersAreBounded()
    {
        for (var i = 0; i < CommandLog.RecentLimit + 5; i++)
        {
            using var command = _log.Begin($"inv-{i}", ["build"], terminal: false);
            command.Complete(0, 0);
        }

        var watchers = Enumerable.Range(0, CommandLog.MaxWatchers).Select(_ => _log.Subscribe()).ToList();
        Assert.All(watchers, Assert.NotNull);
        var ids = watchers[0]!.Snapshot.Where(e => e.EventCase == CommandWatchEvent.EventOneofCase.Command).Select(e => e.Command.InvocationId).Distinct().ToList();
        Assert.Equal(CommandLog.RecentLimit, ids.Count);
        Assert.Equal("inv-5", ids[0]);
        Assert.Null(_log.Subscribe());

        watchers[0]!.Dispose();
        using var again = _log.Subscribe();
        Assert.NotNull(again);
        foreach (var watcher in watchers.Skip(1))
        {
            watcher!.Dispose();
        }
    }

    private static ServerFrame Stderr(string text) => new() { Stderr = ByteString.CopyFromUtf8(text) };

    private static string Describe(CommandWatchEvent e) => e.EventCase switch
    {
        CommandWatchEvent.EventOneofCase.Command => $"command {e.Command.InvocationId} running={e.Command.Running}",
        CommandWatchEvent.EventOneofCase.Output => $"output {e.Output.InvocationId} {(e.Output.Stdout ? "stdout" : "stderr")}",
        _ => e.EventCase.ToString(),
    };

    private static List<CommandWatchEvent> Drain(CommandLog.Watcher watcher)
    {
        var events = new List<CommandWatchEvent>();
        while (watcher.Events.TryRead(out var e))
        {
            events.Add(e);
        }

        return events;
    }
}
