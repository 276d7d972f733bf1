using System.Diagnostics;
using Microsoft.Extensions.Logging.Abstractions;
using Rbs.Agent.Execution;

namespace Rbs.Tests.Agent;

/// <summary>
/// The agent's short-cut past Debian's bazel wrapper runs exactly what the wrapper would exec. Every case runs the real
/// wrapper (a copy of /usr/bin/bazel beside fake bazel-N tools) and the short-cut's launch as real processes and
/// compares what the tool saw: which tool, its arguments, BAZEL_REAL and its whole environment.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class BazelWrapperShortcutTests : IDisposable
{
    private const string DebianWrapper = "/usr/bin/bazel";

    // A fake bazel: says which file it is, its arguments, and its environment (sorted; sh's own changes apply alike).
    private const string FakeTool = "#!/bin/sh\necho \"tool=$0 args=$*\"\nenv | LC_ALL=C sort\n";

    private readonly string _root = Directory.CreateTempSubdirectory("rbs-wrapper-").FullName;
    private readonly string _bin;
    private readonly string _workspace;
    private readonly BazelWrapperShortcut _shortcut = new(NullLogger<BazelWrapperShortcut>.Instance);

    public BazelWrapperShortcutTests()
    {
        _bin = Directory.CreateDirectory(Path.Combine(_root, "bin")).FullName;
        _workspace = Directory.CreateDirectory(Path.Combine(_root, "ws")).FullName;
        File.WriteAllText(Path.Combine(_workspace, "WORKSPACE"), "");
        File.Copy(DebianWrapper, Wrapper);
        InstallTool("bazel-4");
        InstallTool("bazel-5.1");
    }

    private string Wrapper => Path.Combine(_bin, "bazel");

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void TheMachinesWrapperIsTheKnownOne() =>
        Assert.NotNull(_shortcut.Resolve(Launch(_workspace)));

    [Fact]
    public async Task WithoutAVersionTheNewestInstalledBazelRuns()
    {
        InstallTool("bazel-5.10");
        InstallTool("bazel-10");
        var seen = await SameAsWrapperAsync(Launch(_workspace));
        Assert.StartsWith($"tool={_bin}/bazel-10 ", seen, StringComparison.Ordinal);
    }

    [Fact]
    public async Task BazelVersionFileChoosesAndIsReadOnEveryCommand()
    {
        File.WriteAllText(Path.Combine(_workspace, ".bazelversion"), "  4 \t\nignored second line\n");
        Assert.StartsWith($"tool={_bin}/bazel-4 ", await SameAsWrapperAsync(Launch(_workspace)), StringComparison.Ordinal);

        File.WriteAllText(Path.Combine(_workspace, ".bazelversion"), "5.1");
        Assert.StartsWith($"tool={_bin}/bazel-5.1 ", await SameAsWrapperAsync(Launch(_workspace)), StringComparison.Ordinal);

        File.WriteAllText(Path.Combine(_workspace, ".bazelversion"), "latest\n");
        Assert.StartsWith($"tool={_bin}/bazel-5.1 ", await SameAsWrapperAsync(Launch(_workspace)), StringComparison.Ordinal);
    }

    [Fact]
    public async Task UseBazelVersionWinsOverTheFile()
    {
        File.WriteAllText(Path.Combine(_workspace, ".bazelversion"), "5.1\n");
        var seen = await SameAsWrapperAsync(Launch(_workspace, new() { ["USE_BAZEL_VERSION"] = "4" }));
        Assert.StartsWith($"tool={_bin}/bazel-4 ", seen, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ANewlyInstalledVersionIsSeenAtTheNextCommand()
    {
        Assert.StartsWith($"tool={_bin}/bazel-5.1 ", await SameAsWrapperAsync(Launch(_workspace)), StringComparison.Ordinal);
        InstallTool("bazel-6.0.1");
        Assert.StartsWith($"tool={_bin}/bazel-6.0.1 ", await SameAsWrapperAsync(Launch(_workspace)), StringComparison.Ordinal);
    }

    [Fact]
    public async Task ArchitectureSuffixedBinariesSortWithTheOthers()
    {
        // The wrapper single-quotes its '-${os_arch_suffix}' pattern, so suffixed names are found by its second find
        // and ordered by sort -V among the plain ones: left to the wrapper when the names mix.
        var suffix = (await RunAsync("/bin/sh", ["-c", "echo \"$(uname -s | tr '[:upper:]' '[:lower:]')-$(uname -m)\""], _workspace, Environment())).Split('\n')[0];
        InstallTool($"bazel-4.2-{suffix}");
        var mixed = await SameAsWrapperAsync(Launch(_workspace), expectShortcut: false);
        Assert.StartsWith($"tool={_bin}/bazel-5.1 ", mixed, StringComparison.Ordinal);

        // The only one installed: certain, and short-cut.
        File.Delete(Path.Combine(_bin, "bazel-4"));
        File.Delete(Path.Combine(_bin, "bazel-5.1"));
        var seen = await SameAsWrapperAsync(Launch(_workspace));
        Assert.StartsWith($"tool={_bin}/bazel-4.2-{suffix} ", seen, StringComparison.Ordinal);

        // A literal '${os_arch_suffix}' name is what its first find matches.
        InstallTool("bazel-3-${os_arch_suffix}");
        Assert.StartsWith($"tool={_bin}/bazel-3-${{os_arch_suffix}} ", await SameAsWrapperAsync(Launch(_workspace)), StringComparison.Ordinal);
    }

    [Fact]
    public async Task CheckedInToolsBazelRunsWithBazelReal()
    {
        File.WriteAllText(Path.Combine(_workspace, ".bazelversion"), "4\n");
        Assert.StartsWith($"tool={_bin}/bazel-4 ", await SameAsWrapperAsync(Launch(_workspace)), StringComparison.Ordinal);

        // Added after the first command: the next one must find it.
        var tools = Directory.CreateDirectory(Path.Combine(_workspace, "tools")).FullName;
        InstallTool(Path.Combine(tools, "bazel"));
        var seen = await SameAsWrapperAsync(Launch(Path.Combine(_workspace, "tools")));
        Assert.StartsWith($"tool={tools}/bazel ", seen, StringComparison.Ordinal);
        Assert.Contains($"\nBAZEL_REAL={_bin}/bazel-4\n", seen, StringComparison.Ordinal);

        // Not executable: the wrapper ignores it, and so does the short-cut.
        File.SetUnixFileMode(Path.Combine(tools, "bazel"), UnixFileMode.UserRead | UnixFileMode.UserWrite);
        Assert.StartsWith($"tool={_bin}/bazel-4 ", await SameAsWrapperAsync(Launch(_workspace)), StringComparison.Ordinal);
    }

    [Fact]
    public async Task ToolsBazelWithAMissingVersionStillRuns()
    {
        File.WriteAllText(Path.Combine(_workspace, ".bazelversion"), "7.7.7\n");
        InstallTool(Path.Combine(Directory.CreateDirectory(Path.Combine(_workspace, "tools")).FullName, "bazel"));
        var seen = await SameAsWrapperAsync(Launch(_workspace));
        Assert.Contains($"\nBAZEL_REAL={_bin}/bazel-7.7.7\n", seen, StringComparison.Ordinal);
    }

    [Fact]
    public async Task TheWorkspaceIsTheNearestWorkspaceFileAboveTheWorkingDirectory()
    {
        var nested = Directory.CreateDirectory(Path.Combine(_workspace, "a", "b")).FullName;
        File.WriteAllText(Path.Combine(_workspace, "a", "WORKSPACE"), "");
        File.WriteAllText(Path.Combine(_workspace, "a", ".bazelversion"), "4\n");
        File.WriteAllText(Path.Combine(_workspace, ".bazelversion"), "5.1\n");
        Assert.StartsWith($"tool={_bin}/bazel-4 ", await SameAsWrapperAsync(Launch(nested)), StringComparison.Ordinal);
    }

    [Fact]
    public async Task ShellVariablesReachTheToolAsBashExecPassesThem()
    {
        var link = Path.Combine(_root, "link");
        File.CreateSymbolicLink(link, _workspace);
        // An inherited PWD naming the working directory through a symlink is kept; SHLVL, OLDPWD and _ as bash does.
        await SameAsWrapperAsync(Launch(_workspace, new() { ["PWD"] = link, ["SHLVL"] = " 7 ", ["OLDPWD"] = "/nonexistent", ["_"] = "/x" }));
        await SameAsWrapperAsync(Launch(_workspace, new() { ["PWD"] = "/tmp", ["SHLVL"] = "-3", ["OLDPWD"] = _root, ["BAZEL_REAL"] = "/inherited" }));
        await SameAsWrapperAsync(Launch(_workspace, new() { ["SHLVL"] = "abc" }), expectShortcut: false);
        await SameAsWrapperAsync(Launch(_workspace, new() { ["SHLVL"] = "999" }), expectShortcut: false);
        await SameAsWrapperAsync(Launch(_workspace, new() { ["BASH_ENV"] = "/dev/null" }), expectShortcut: false);
    }

    [Fact]
    public async Task WhereTheWrapperWouldFailItRunsItself()
    {
        File.WriteAllText(Path.Combine(_workspace, ".bazelversion"), "9.9\n");
        var output = await SameAsWrapperAsync(Launch(_workspace), expectShortcut: false);
        Assert.Contains("requires Bazel 9.9", output, StringComparison.Ordinal);

        // A .bazelversion bash cannot read (here: a directory) makes bash print an error of its own.
        File.Delete(Path.Combine(_workspace, ".bazelversion"));
        Directory.CreateDirectory(Path.Combine(_workspace, ".bazelversion"));
        await SameAsWrapperAsync(Launch(_workspace), expectShortcut: false);
    }

    [Fact]
    public async Task AnUnknownWrapperIsNeverShortCut()
    {
        File.AppendAllText(Wrapper, "# locally modified\n");
        await SameAsWrapperAsync(Launch(_workspace), expectShortcut: false);
    }

    [Fact]
    public void VersionsOrderLikeSortV()
    {
        Assert.True(BazelWrapperShortcut.CompareVersions([4], [4, 2, 3]) < 0);
        Assert.True(BazelWrapperShortcut.CompareVersions([4, 10], [4, 9]) > 0);
        Assert.True(BazelWrapperShortcut.CompareVersions([10], [9, 99]) > 0);
        Assert.Equal(0, BazelWrapperShortcut.CompareVersions([5, 1], [5, 1]));
    }

    private void InstallTool(string nameOrPath)
    {
        var path = Path.IsPathRooted(nameOrPath) ? nameOrPath : Path.Combine(_bin, nameOrPath);
        File.WriteAllText(path, FakeTool);
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
    }

    private ToolStartInfo Launch(string workingDirectory, Dictionary<string, string>? extra = null)
    {
        var env = Environment();
        foreach (var (name, value) in extra ?? [])
        {
            env[name] = value;
        }

        return new ToolStartInfo(Wrapper, "bazel", ["build", "//x:y", "--flag=a b"], workingDirectory, env);
    }

    // What an agent typically has: a PATH with coreutils and a HOME; nothing bash-sensitive.
    private Dictionary<string, string> Environment() => new(StringComparer.Ordinal)
    {
        ["PATH"] = "/usr/local/bin:/usr/bin:/bin",
        ["HOME"] = _root,
        ["LANG"] = "C.UTF-8",
        ["SHELL"] = "/bin/bash",
        ["HOSTNAME"] = "agent-host",
    };

    /// <summary>Runs the wrapper and the short-cut's launch; both must print the same. Returns that output.</summary>
    private async Task<string> SameAsWrapperAsync(ToolStartInfo launch, bool expectShortcut = true)
    {
        var viaWrapper = await RunAsync(launch.Path, launch.Arguments, launch.WorkingDirectory, launch.Environment);
        var direct = _shortcut.Resolve(launch);
        if (!expectShortcut)
        {
            Assert.Null(direct);
            return viaWrapper;
        }

        Assert.NotNull(direct);
        Assert.NotEqual(launch.Path, direct.Path);
        Assert.Equal(launch.Path, direct.Argv0);
        var viaShortcut = await RunAsync(direct.Path, direct.Arguments, direct.WorkingDirectory, direct.Environment);
        Assert.Equal(viaWrapper, viaShortcut);
        return viaWrapper;
    }

    private static async Task<string> RunAsync(string program, IReadOnlyList<string> args, string cwd, IReadOnlyDictionary<string, string> env)
    {
        var info = new ProcessStartInfo(program)
        {
            WorkingDirectory = cwd,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        info.Environment.Clear();
        foreach (var (name, value) in env)
        {
            info.Environment[name] = value;
        }

        using var process = Process.Start(info)!;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var stdout = process.StandardOutput.ReadToEndAsync(timeout.Token);
        var stderr = process.StandardError.ReadToEndAsync(timeout.Token);
        await process.WaitForExitAsync(timeout.Token);
        return $"{await stdout}{await stderr}exit={process.ExitCode}\n";
    }
}
