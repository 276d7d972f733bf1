using Rbs.Agent.Execution;
using Rbs.Agent.Hosting;

namespace Rbs.Tests.Agent;

public sealed class AgentUnitTests
{
    [Theory]
    [InlineData("127.0.0.1:0", true, 0)]
    [InlineData("0.0.0.0:9011", true, 9011)]
    [InlineData("[::1]:8080", true, 8080)]
    [InlineData("localhost:9011", true, 9011)]
    [InlineData("127.0.0.1", false, 0)]
    [InlineData("[::1]", false, 0)]
    [InlineData("example.com:80", false, 0)]
    [InlineData("127.0.0.1:70000", false, 0)]
    [InlineData("", false, 0)]
    public void ListenAddressNeedsAnIpOrLocalhostAndAPort(string value, bool valid, int port)
    {
        Assert.Equal(valid, ListenAddress.TryParse(value, out _, out var parsedPort));
        if (valid)
        {
            Assert.Equal(port, parsedPort);
        }
    }

    [Theory]
    [InlineData("TERM", true)]
    [InlineData("LC_ALL", true)]
    [InlineData("LC_CTYPE", true)]
    [InlineData("CLICOLOR_FORCE", true)]
    [InlineData("PATH", false)]
    [InlineData("LD_PRELOAD", false)]
    [InlineData("BAZELISK_HOME", false)]
    [InlineData("term", false)]
    public void OnlyTerminalAndLocaleVariablesAreAllowed(string name, bool allowed) =>
        Assert.Equal(allowed, ToolEnvironment.IsAllowed(name));

    [Theory]
    [InlineData("/ws", "/ws", true)]
    [InlineData("/ws", "/ws/a/b", true)]
    [InlineData("/ws", "/ws-other", false)]
    [InlineData("/ws", "/", false)]
    [InlineData("/", "/anything", true)]
    public void InsideTheWorkspaceMeansTheRootOrBelowIt(string root, string path, bool inside) =>
        Assert.Equal(inside, WorkspacePaths.IsInside(root, path));

    [Fact]
    public void BuildToolIsAnAbsoluteExecutableOrABareNameOnPath()
    {
        Assert.Equal("/bin/sh", BuildToolLocator.Resolve("/bin/sh", "", out _));
        Assert.Equal("/bin/sh", BuildToolLocator.Resolve("sh", "/nonexistent:/bin", out _));
        Assert.Null(BuildToolLocator.Resolve("bin/sh", "/", out var relativeError));
        Assert.Contains("not a relative path", relativeError, StringComparison.Ordinal);
        Assert.Null(BuildToolLocator.Resolve("/etc/passwd", "", out var notExecutable));
        Assert.Contains("not an executable file", notExecutable, StringComparison.Ordinal);
    }

    [Fact]
    public void TrackerCountsCommandsAndReportsIdleness()
    {
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UnixEpoch.AddDays(1));
        var tracker = new CommandTracker(time);
        var interrupted = 0;
        Assert.True(tracker.WhenIdleAsync(CancellationToken.None).IsCompleted);

        time.Advance(TimeSpan.FromMinutes(5));
        var command = tracker.Begin("a", () => interrupted++);
        Assert.Equal(1, tracker.RunningCount);
        Assert.Equal(time.GetUtcNow(), tracker.LastActivity);
        var idle = tracker.WhenIdleAsync(CancellationToken.None);
        Assert.False(idle.IsCompleted);

        Assert.Equal(1, tracker.InterruptAll());
        Assert.Equal(1, interrupted);
        Assert.True(tracker.IsStopping);

        time.Advance(TimeSpan.FromMinutes(1));
        command.Dispose();
        command.Dispose();
        Assert.Equal(0, tracker.RunningCount);
        Assert.True(idle.IsCompleted);
        Assert.Equal(time.GetUtcNow(), tracker.LastActivity);
    }
}
