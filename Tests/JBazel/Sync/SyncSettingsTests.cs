using Rbs.JBazel.Commands;
using Rbs.JBazel.Configuration;
using Rbs.JBazel.Terminal;

namespace Rbs.Tests.JBazel.Sync;

/// <summary>The --rbs_sync* options, wherever they are written.</summary>
public sealed class SyncSettingsTests : IDisposable
{
    private readonly TempWorkspace _workspace = new();

    public void Dispose() => _workspace.Dispose();

    [Fact]
    public void DefaultsAreNoForcedSyncGitIgnoredFilesSentAndTestLogsFetched()
    {
        var settings = Resolve([], []);
        Assert.False(settings.Sync);
        // bazel's glob() reads git-ignored files, so leaving them out is opt-in.
        Assert.False(settings.SyncGitignore);
        Assert.True(settings.FetchTestLogs);
        Assert.False(Resolve(["--rbs_fetch_test_logs=false"], []).FetchTestLogs);
        Assert.False(Resolve([], new() { ["RBS_FETCH_TEST_LOGS"] = "0" }).FetchTestLogs);
        Assert.Empty(settings.SyncExcludes);
    }

    [Fact]
    public void FlagsDoNotSwallowTheBazelCommandAfterThem()
    {
        var split = ArgumentSplitter.Split(["--rbs_sync", "build", "--rbs_sync_exclude", "/data/", "//..."], BazelCommand.OptionsTakingValues);
        Assert.Equal(["build", "//..."], split.BazelArgs);
        Assert.Equal(["--rbs_sync", "--rbs_sync_exclude", "/data/"], split.RbsTokens);
    }

    [Fact]
    public void ExcludesAccumulateFromEverySourceCommandLineLast()
    {
        File.WriteAllText(Path.Combine(_workspace.Home, ".jbazelrc"), "--rbs_sync_exclude=/user/\n");
        File.WriteAllText(Path.Combine(_workspace.Root, ".jbazelrc"), "--rbs_sync_exclude=*.log --rbs_sync_gitignore=false\n");
        var settings = Resolve(
            ["--rbs_sync", "--rbs_sync_exclude=/a/", "--rbs_sync_exclude", "!/a/keep"],
            new() { ["RBS_SYNC_EXCLUDE"] = "/env/" });

        Assert.True(settings.Sync);
        Assert.False(settings.SyncGitignore);
        Assert.Equal(["/user/", "*.log", "/env/", "/a/", "!/a/keep"], settings.SyncExcludes);
    }

    [Fact]
    public void EnvironmentCanForceSyncAndCommandLineCanTurnItOff()
    {
        Assert.True(Resolve([], new() { ["RBS_SYNC"] = "true" }).Sync);
        Assert.False(Resolve(["--rbs_sync=false"], new() { ["RBS_SYNC"] = "true" }).Sync);
        Assert.True(Resolve(["--rbs_sync_gitignore=true"], new() { ["RBS_SYNC_GITIGNORE"] = "false" }).SyncGitignore);

        // Switches take the usual spellings, from the environment too.
        Assert.True(Resolve([], new() { ["RBS_SYNC"] = "1" }).Sync);
        Assert.False(Resolve([], new() { ["RBS_SYNC_GITIGNORE"] = "no" }).SyncGitignore);
    }

    [Fact]
    public void ABadSwitchValueIsACommandLineError()
    {
        var command = new BazelCommand(
            new CliEnvironment(new Dictionary<string, string>(), _workspace.Root, _workspace.Home, "test-host"),
            new StandardStreams(Stream.Null, Stream.Null, Stream.Null));
        var parse = command.ParseTokens(["--rbs_sync=maybe"]);
        Assert.Contains("invalid --rbs_sync", BazelCommand.DescribeErrors(parse), StringComparison.Ordinal);
    }

    [Fact]
    public void HelpDocumentsTheSyncOptions()
    {
        var help = BazelCommand.HelpText();
        Assert.Contains("--rbs_sync=true|false", help, StringComparison.Ordinal);
        Assert.Contains("--rbs_sync_exclude=PATTERN", help, StringComparison.Ordinal);
        Assert.Contains("env RBS_SYNC_GITIGNORE, default false", help, StringComparison.Ordinal);
        Assert.Contains("env RBS_FETCH_TEST_LOGS, default true", help, StringComparison.Ordinal);
    }

    private RbsSettings Resolve(string[] commandLine, Dictionary<string, string> variables)
    {
        var command = new BazelCommand(
            new CliEnvironment(variables, _workspace.Root, _workspace.Home, "test-host"),
            new StandardStreams(Stream.Null, Stream.Null, Stream.Null));
        var parse = command.ParseTokens(commandLine);
        Assert.Empty(parse.Errors);
        return command.ResolveSettings(parse, _workspace.Root);
    }
}
