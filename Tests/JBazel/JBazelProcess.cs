using System.Diagnostics;
using System.Text;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.JBazel;

/// <summary>The real jbazel executable (apphost in the test output) running as a child process with piped stdio.</summary>
public sealed class JBazelProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly ITestOutputHelper _output;
    private readonly MemoryStream _stdout = new();
    private readonly MemoryStream _stderr = new();
    private readonly Task _stdoutPump;
    private readonly Task _stderrPump;
    private readonly bool _closeStdoutEarly;

    private JBazelProcess(Process process, ITestOutputHelper output, bool readStdout)
    {
        _process = process;
        _output = output;
        _closeStdoutEarly = !readStdout;
        _stdoutPump = readStdout ? PumpAsync(process.StandardOutput.BaseStream, _stdout) : Task.CompletedTask;
        _stderrPump = PumpAsync(process.StandardError.BaseStream, _stderr);
    }

    /// <summary>
    /// The apphost in the test output, or RBS_TEST_JBAZEL (e.g. a Native AOT build from
    /// `dotnet publish JBazel -c Release -r linux-x64`) to run this suite against another jbazel.
    /// </summary>
    public static string ExecutablePath =>
        Environment.GetEnvironmentVariable("RBS_TEST_JBAZEL") is { Length: > 0 } path
            ? path
            : Path.Combine(AppContext.BaseDirectory, "jbazel");

    public int Id => _process.Id;

    public Stream StandardInput => _process.StandardInput.BaseStream;

    /// <summary>The raw stdout stream, for tests that read it themselves (readStdout: false).</summary>
    public Stream StandardOutput => _process.StandardOutput.BaseStream;

    /// <summary>
    /// Starts jbazel in <paramref name="workingDirectory"/> with a clean RBS environment: no inherited
    /// RBS_* variables, HOME set to <paramref name="home"/> so the developer's ~/.jbazelrc never leaks in.
    /// </summary>
    public static JBazelProcess Start(
        ITestOutputHelper output,
        string workingDirectory,
        string home,
        IReadOnlyDictionary<string, string?> environment,
        IEnumerable<string> args,
        bool readStdout = true,
        bool pseudoTerminal = false,
        Func<string, string>? shellCommand = null)
    {
        var info = new ProcessStartInfo(pseudoTerminal ? "script" : ExecutablePath)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (pseudoTerminal)
        {
            // util-linux script(1) runs jbazel with a pseudo-terminal as stdin, stdout and stderr.
            info.ArgumentList.Add("-q");
            info.ArgumentList.Add("-e");
            info.ArgumentList.Add("-c");
            var jbazelCommand = string.Join(' ', args.Prepend(ExecutablePath).Select(arg => $"'{arg}'"));
            info.ArgumentList.Add(shellCommand is null ? jbazelCommand : shellCommand(jbazelCommand));
            info.ArgumentList.Add("/dev/null");
        }
        else
        {
            foreach (var arg in args)
            {
                info.ArgumentList.Add(arg);
            }
        }

        foreach (var name in info.Environment.Keys.Where(k => k.StartsWith("RBS_", StringComparison.Ordinal)).ToList())
        {
            info.Environment.Remove(name);
        }

        info.Environment["HOME"] = home;
        // jbazel's caches (sync digests, allocations) under that HOME too, never the test runner's.
        info.Environment.Remove("XDG_CACHE_HOME");
        if (pseudoTerminal)
        {
            // script(1) runs the command with $SHELL -c. A Ctrl-C typed into the terminal reaches that shell too
            // (it is in the foreground process group). bash, like a user's interactive shell, waits for jbazel and
            // goes on when jbazel handled the signal; dash (/bin/sh here, and $SHELL where it is unset) dies of the
            // SIGINT itself. The tests must not depend on the login shell of whoever runs them.
            info.Environment["SHELL"] = "/bin/bash";
        }

        foreach (var (name, value) in environment)
        {
            if (value is null)
            {
                info.Environment.Remove(name);
            }
            else
            {
                info.Environment[name] = value;
            }
        }

        TestLog.Write(output, $"$ (cd {workingDirectory} && jbazel {string.Join(' ', info.ArgumentList)})");
        var process = Process.Start(info) ?? throw new InvalidOperationException("jbazel did not start");
        return new JBazelProcess(process, output, readStdout);
    }

    public byte[] Stdout
    {
        get
        {
            lock (_stdout)
            {
                return _stdout.ToArray();
            }
        }
    }

    public byte[] Stderr
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToArray();
            }
        }
    }

    public string StdoutText => Encoding.UTF8.GetString(Stdout);

    public string StderrText => Encoding.UTF8.GetString(Stderr);

    /// <summary>Waits for exit (failing the test with the logs after <paramref name="timeout"/>) and returns the exit code.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        try
        {
            await _process.WaitForExitAsync().WaitAsync(timeout);
            await Task.WhenAll(_stdoutPump, _stderrPump).WaitAsync(TimeSpan.FromSeconds(10));
        }
        catch (TimeoutException)
        {
            Log();
            throw new TimeoutException($"jbazel did not exit within {timeout}");
        }

        Log();
        return _process.ExitCode;
    }

    /// <summary>Sends a signal the way a terminal's Ctrl-C does (kill(1), so no P/Invoke in tests).</summary>
    public async Task SignalAsync(string signal)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", ["-" + signal, _process.Id.ToString()]) { UseShellExecute = false })!;
        await kill.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
        TestLog.Write(_output, $"sent SIG{signal} to jbazel ({_process.Id}), kill exited {kill.ExitCode}");
    }

    /// <summary>Waits until jbazel's stdout contains <paramref name="text"/>.</summary>
    public async Task WaitForStdoutAsync(string text, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        while (!StdoutText.Contains(text, StringComparison.Ordinal))
        {
            if (_process.HasExited)
            {
                Log();
                throw new InvalidOperationException($"jbazel exited ({_process.ExitCode}) before printing '{text}'");
            }

            await Task.Delay(20, cts.Token);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill();
            await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
        }

        _process.Dispose();
    }

    private void Log()
    {
        var stdout = _closeStdoutEarly ? "(read by the test)" : Summarize(Stdout);
        TestLog.Write(_output, $"jbazel exit={(_process.HasExited ? _process.ExitCode.ToString() : "running")} stdout={stdout}");
        TestLog.Write(_output, $"jbazel stderr={Summarize(Stderr)}");
    }

    private static string Summarize(byte[] bytes) =>
        bytes.Length <= 2000 ? $"[{bytes.Length} bytes] {Encoding.UTF8.GetString(bytes)}" : $"[{bytes.Length} bytes]";

    private async Task PumpAsync(Stream source, MemoryStream target)
    {
        var buffer = new byte[81920];
        int read;
        while ((read = await source.ReadAsync(buffer)) > 0)
        {
            lock (target)
            {
                target.Write(buffer, 0, read);
            }
        }
    }
}
